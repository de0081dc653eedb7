"""Fashion-MNIST-C corruptions against scipy and numpy loops; determinism from the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from swag.corruptions import CORRUPTIONS, ROTATIONS, SEVERITY_PARAMS, corrupt, corrupted_sets


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(
        n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_is_deterministic_in_range_and_worsens(name: str) -> None:
    x = images()
    distances = []
    for s in range(1, 6):
        a, b = corrupt(x, name, s, seed=3), corrupt(x, name, s, seed=3)
        assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
        assert a.min() >= 0 and a.max() <= 1
        distances.append((a - x).abs().mean().item())
    assert distances[0] > 0
    # stronger intensities move the images further (translation: in expectation, so loosely)
    assert distances[-1] > distances[0]


def test_seed_changes_only_the_random_corruptions() -> None:
    x = images()
    for name in ("gaussian_noise", "translate"):
        assert not torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=1))
    for name in ("gaussian_blur", "contrast", "pixelate"):
        assert torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=1))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_blur_matches_scipy(severity: int) -> None:
    x = images(3)
    sigma = SEVERITY_PARAMS["gaussian_blur"][severity - 1]
    expected = np.stack(
        [gaussian_filter(im[0], sigma, mode="nearest", truncate=3.0) for im in x.numpy()]
    )[:, None]
    ours = corrupt(x, "gaussian_blur", severity).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_contrast_matches_formula() -> None:
    x = images(2).numpy()
    ours = corrupt(torch.from_numpy(x), "contrast", 2).numpy()
    for i in range(2):
        m = x[i].mean()
        np.testing.assert_allclose(ours[i], np.clip((x[i] - m) * 0.3 + m, 0, 1), atol=1e-15)


def test_noise_is_the_seeded_draw() -> None:
    x = images(2)
    g = torch.Generator().manual_seed(7 * 100 + 0 * 10 + 4)
    expected = (x + 0.26 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    assert torch.equal(corrupt(x, "gaussian_noise", 4, seed=7), expected)


def test_translation_moves_each_image_by_the_severity_length() -> None:
    x = torch.zeros(50, 1, 28, 28, dtype=torch.float64)
    x[:, :, 14, 14] = 1.0  # one lit pixel in the middle
    for s, length in enumerate(SEVERITY_PARAMS["translate"], start=1):
        out = corrupt(x, "translate", s, seed=2)
        for im in out:
            (ys, xs) = np.nonzero(im[0].numpy())
            assert len(ys) == 1  # moved, not lost or blurred
            dist = math.hypot(ys[0] - 14, xs[0] - 14)
            assert abs(dist - length) <= math.sqrt(0.5) + 1e-9  # rounding of (dx, dy)


def naive_pixelate(im: np.ndarray, size: int) -> np.ndarray:
    h = im.shape[0]
    coarse = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r0, r1 = (i * h) // size, -((-(i + 1) * h) // size)
            c0, c1 = (j * h) // size, -((-(j + 1) * h) // size)
            coarse[i, j] = im[r0:r1, c0:c1].mean()
    return np.array(
        [[coarse[(r * size) // h, (c * size) // h] for c in range(h)] for r in range(h)]
    )


@pytest.mark.parametrize("severity", [1, 4])
def test_pixelate_matches_block_means(severity: int) -> None:
    x = images(2)
    size = round(28 * SEVERITY_PARAMS["pixelate"][severity - 1])
    ours = corrupt(x, "pixelate", severity).numpy()
    for i in range(2):
        np.testing.assert_allclose(ours[i, 0], naive_pixelate(x[i, 0].numpy(), size), atol=1e-12)


def test_corrupted_sets_has_every_intensity_and_rotation() -> None:
    x = images(2)
    sets = corrupted_sets(x, seed=1)
    assert set(sets) == {*CORRUPTIONS, "rotate"}
    assert all(len(sets[n]) == 5 for n in CORRUPTIONS)
    assert len(sets["rotate"]) == len(ROTATIONS)
    torch.testing.assert_close(sets["rotate"][0], x, rtol=0, atol=1e-12)  # 0 degrees
    torch.testing.assert_close(
        sets["rotate"][3], torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([[0.0]], "contrast", 1), TypeError, "images must be a torch.Tensor"),
        ((torch.zeros(2, 28, 28), "contrast", 1), ValueError, r"\(N, C, H, W\)"),
        ((torch.zeros(1, 1, 4, 4), "fog", 1), ValueError, "name must be one of"),
        ((torch.zeros(1, 1, 4, 4), "contrast", 0), ValueError, "severity"),
        ((torch.zeros(1, 1, 4, 4), "contrast", 2.0), ValueError, "severity"),
    ],
)
def test_invalid_arguments(args: tuple[object, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        corrupt(*args)  # type: ignore[arg-type]


def test_invalid_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        corrupt(torch.zeros(1, 1, 4, 4), "contrast", 1, seed=-1)
