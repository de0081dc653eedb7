"""Fashion-MNIST-C: corrupted copies of test images at 5 intensities, built offline from a seed.

After Hendrycks & Dietterich (2019) and the shift protocol of Ovadia et al. (2019). Every function
takes images ``(N, C, H, W)`` with values in ``[0, 1]`` and returns a new float tensor of the same
shape in ``[0, 1]``; the random ones (noise, translation) draw from a CPU generator seeded from
``seed``, the corruption and the intensity, so a set is reproducible bit for bit on CPU. The
parameters per intensity are :data:`SEVERITY_PARAMS` (table in ``docs/metrics.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from swag.data import synthetic_shift

__all__ = ["CORRUPTIONS", "ROTATIONS", "SEVERITY_PARAMS", "corrupt", "corrupted_sets"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "gaussian_blur",
    "contrast",
    "translate",
    "pixelate",
)
"""The corruption names, in report order."""

SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise standard deviation
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # kernel standard deviation, pixels
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor on the deviation from the image mean
    "translate": (2.0, 4.0, 6.0, 8.0, 10.0),  # shift length, pixels, random direction
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # side of the coarse grid / side of the image
}
"""Parameter of each corruption at intensities 1 to 5."""

ROTATIONS: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0)
"""Rotation angles in degrees for the rotation shift (Ovadia et al., 2019)."""


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0) -> Tensor:
    """One corruption at one intensity.

    Args:
        images: ``(N, C, H, W)`` floats in ``[0, 1]``.
        name: One of :data:`CORRUPTIONS`.
        severity: Intensity, an integer in ``1..5``.
        seed: Seed of the random corruptions (noise, translation directions).

    Returns:
        ``(N, C, H, W)`` corrupted images in ``[0, 1]``, dtype of ``images``.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float (N, C, H, W) tensor, got shape {tuple(images.shape)} and "
            f"dtype {images.dtype}; convert uint8 pixels with images.float() / 255"
        )
    if name not in SEVERITY_PARAMS:
        raise ValueError(f"name must be one of {CORRUPTIONS}, got {name!r}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    value = SEVERITY_PARAMS[name][severity - 1]
    g = torch.Generator().manual_seed(seed * 100 + CORRUPTIONS.index(name) * 10 + severity)
    if name == "gaussian_noise":
        noise = torch.randn(images.shape, generator=g, dtype=images.dtype)
        return (images + value * noise.to(images.device)).clamp(0.0, 1.0)
    if name == "gaussian_blur":
        return _blur(images, value)
    if name == "contrast":
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return ((images - mean) * value + mean).clamp(0.0, 1.0)
    if name == "translate":
        angle = 2 * math.pi * torch.rand(images.shape[0], generator=g, dtype=torch.float64)
        dx = (value * torch.cos(angle)).round().long().tolist()
        dy = (value * torch.sin(angle)).round().long().tolist()
        return torch.stack([_shift(im, x, y) for im, x, y in zip(images, dx, dy, strict=True)])
    h, w = images.shape[-2:]
    coarse = F.adaptive_avg_pool2d(images, (round(h * value), round(w * value)))
    return F.interpolate(coarse, size=(h, w), mode="nearest")


def corrupted_sets(
    images: Tensor, *, seed: int = 0, names: tuple[str, ...] = CORRUPTIONS
) -> dict[str, list[Tensor]]:
    """Every corruption at intensities 1..5, and the rotations of :data:`ROTATIONS`.

    Args:
        images: ``(N, C, H, W)`` floats in ``[0, 1]``.
        seed: Seed of the random corruptions.
        names: Corruptions to build (default all).

    Returns:
        ``{name: [intensity 1, ..., intensity 5]}`` and ``"rotate"``: one tensor per angle.
    """
    out = {name: [corrupt(images, name, s, seed=seed) for s in range(1, 6)] for name in names}
    out["rotate"] = [synthetic_shift(images, "rotate", a) for a in ROTATIONS]
    return out


def _blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, kernel radius ``int(3 sigma + 0.5)``, edges replicated."""
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype).to(images.device)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def _shift(image: Tensor, dx: int, dy: int) -> Tensor:
    """``image (C, H, W)`` moved ``dx`` pixels right and ``dy`` down, zeros filling in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[:, dst_y, dst_x] = image[:, src_y, src_x]
    return out
