"""Fashion-MNIST-C corruptions against scipy and numpy loops; determinism from the seed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from swag.bench._report import intensity_figure
from swag.corruptions import (
    CORRUPTIONS,
    ELASTIC_SIGMA,
    ROTATIONS,
    SEVERITY_PARAMS,
    _warp,
    corrupt,
    corrupted_sets,
    elastic_displacement,
)


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
    for name in ("gaussian_noise", "translate", "elastic"):
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


def elastic_generator(seed: int, severity: int) -> torch.Generator:
    """The generator ``corrupt`` seeds for the elastic corruption."""
    return torch.Generator().manual_seed(seed * 100 + CORRUPTIONS.index("elastic") * 10 + severity)


def test_elastic_field_is_scipy_smoothed_uniform_noise() -> None:
    # the same uniform draws, smoothed by scipy in float64: only summation order differs,
    # ~1e-16 relative on values <= alpha = 48, so 1e-12 absolute is loose
    alpha, sigma = SEVERITY_PARAMS["elastic"][4], ELASTIC_SIGMA
    noise = torch.rand((3, 2, 20, 28), generator=elastic_generator(5, 5), dtype=torch.float64)
    expected = alpha * np.stack(
        [
            [gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in f]
            for f in noise.numpy() * 2 - 1
        ]
    )
    ours = elastic_displacement(3, 20, 28, alpha, sigma, generator=elastic_generator(5, 5))
    assert ours.shape == (3, 2, 20, 28) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)


def warp_reference(x: np.ndarray, field: np.ndarray) -> np.ndarray:
    """scipy's bilinear lookup at ``(y + dy, x + dx)``, zeros outside (interpolated to 0)."""
    h, w = x.shape[-2:]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        coords = np.stack([ys + field[i, 1], xs + field[i, 0]])
        for c in range(x.shape[1]):
            out[i, c] = map_coordinates(x[i, c], coords, order=1, mode="grid-constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("severity", [1, 5])
def test_elastic_matches_scipy_map_coordinates(
    dtype: torch.dtype, atol: float, severity: int
) -> None:
    # H != W and 2 channels, so a swapped axis or channel mix-up fails. Tolerance: float64 loses
    # ~1e-15 relative mapping pixels to [-1, 1] and back; float32 rounds the sample coordinates
    # to ~27 * 6e-8 = 2e-6 pixels, times a bilinear slope <= 1 (pixel values in [0, 1])
    x = torch.rand(4, 2, 20, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    field = elastic_displacement(
        4,
        20,
        28,
        SEVERITY_PARAMS["elastic"][severity - 1],
        ELASTIC_SIGMA,
        generator=elastic_generator(2, severity),
    )
    ours = corrupt(x.to(dtype), "elastic", severity, seed=2)
    assert ours.shape == x.shape and ours.dtype == dtype
    expected = warp_reference(x.to(dtype).double().numpy(), field.numpy())
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=atol)


def test_elastic_direction_convention_on_an_integer_field() -> None:
    # a constant field dx = +1, dy = 0 samples the right neighbour: out[..., x] = in[..., x + 1]
    x = images(2)
    field = torch.zeros(2, 2, 28, 28, dtype=torch.float64)
    field[:, 0] = 1.0
    expected = torch.zeros_like(x)
    expected[..., :-1] = x[..., 1:]
    torch.testing.assert_close(_warp(x, field), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        warp_reference(x.numpy(), field.numpy()), expected.numpy(), atol=1e-12
    )


def test_elastic_intensity_increases_the_mean_displacement() -> None:
    # the fields corrupt draws for 32 images at each intensity: mean length of the displacement
    means = [
        elastic_displacement(32, 28, 28, alpha, ELASTIC_SIGMA, generator=elastic_generator(0, s))
        .norm(dim=1)
        .mean()
        .item()
        for s, alpha in enumerate(SEVERITY_PARAMS["elastic"], start=1)
    ]
    assert all(b > a * 1.2 for a, b in itertools.pairwise(means))
    assert 0.3 < means[0] < 1.0 and 3.0 < means[-1] < 5.0  # the table in docs/metrics.md


def test_elastic_displacement_rejects_a_non_positive_sigma() -> None:
    with pytest.raises(ValueError, match="sigma must be > 0"):
        elastic_displacement(1, 4, 4, 1.0, 0.0, generator=torch.Generator())


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


def test_bench_intensity_figure_counts_the_corruptions_it_averages() -> None:
    # the report's figure title named "5 corruptions" whatever the sets held; six with elastic
    cell = {"accuracy": 0.5, "nll": 1.0, "ece": 0.1}
    sets = {name: {str(s): cell for s in range(1, 6)} for name in CORRUPTIONS}
    sets["mean"] = sets[CORRUPTIONS[0]]
    sets["rotate"] = {str(a): cell for a in ROTATIONS}
    summary = {"results": {"SGD": cell}, "shift_intensities": {"SGD": sets}}
    fig = intensity_figure([summary])
    assert fig.get_suptitle() == (
        "Shift intensities: Fashion-MNIST-C (mean over 6 corruptions) and rotations"
    )
