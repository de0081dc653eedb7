"""Fashion-MNIST-C: corrupted copies of test images at 5 intensities, built offline from a seed.

After Hendrycks & Dietterich (2019) and the shift protocol of Ovadia et al. (2019). Every function
takes images ``(N, C, H, W)`` with values in ``[0, 1]`` and returns a new float tensor of the same
shape in ``[0, 1]``; the random ones (noise, translation, elastic) draw from a CPU generator
seeded from ``seed``, the corruption and the intensity, so a set is reproducible bit for bit on
CPU. The parameters per intensity are :data:`SEVERITY_PARAMS` and :data:`ELASTIC_SIGMA` (table
in ``docs/metrics.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from swag.data import synthetic_shift

__all__ = [
    "CORRUPTIONS",
    "ELASTIC_SIGMA",
    "ROTATIONS",
    "SEVERITY_PARAMS",
    "corrupt",
    "corrupted_sets",
    "elastic_displacement",
]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "gaussian_blur",
    "contrast",
    "translate",
    "pixelate",
    "elastic",
)
"""The corruption names, in report order."""

SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise standard deviation
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # kernel standard deviation, pixels
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor on the deviation from the image mean
    "translate": (2.0, 4.0, 6.0, 8.0, 10.0),  # shift length, pixels, random direction
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # side of the coarse grid / side of the image
    # scale alpha of the smoothed displacement field (Simard et al. 2003: alpha 34, sigma 4)
    "elastic": (8.0, 16.0, 24.0, 34.0, 48.0),
}
"""Parameter of each corruption at intensities 1 to 5."""

ELASTIC_SIGMA: float = 4.0
"""Smoothing length (pixels) of the elastic displacement field, at every intensity."""

ROTATIONS: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0)
"""Rotation angles in degrees for the rotation shift (Ovadia et al., 2019)."""


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0) -> Tensor:
    """One corruption at one intensity.

    Args:
        images: ``(N, C, H, W)`` floats in ``[0, 1]``.
        name: One of :data:`CORRUPTIONS`.
        severity: Intensity, an integer in ``1..5``.
        seed: Seed of the random corruptions (noise, translation directions, elastic fields).

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
    if name == "elastic":
        field = elastic_displacement(images.shape[0], h, w, value, ELASTIC_SIGMA, generator=g)
        return _warp(images, field.to(images.device))
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


def elastic_displacement(
    n: int, height: int, width: int, alpha: float, sigma: float, *, generator: torch.Generator
) -> Tensor:
    """Random smooth displacement fields, in pixels (Simard et al., 2003; ImageNet-C's elastic).

    Each of the ``2 n`` components is ``alpha`` times a field of independent ``U(-1, 1)`` draws
    smoothed by a Gaussian of standard deviation ``sigma`` pixels (kernel radius
    ``int(3 sigma + 0.5)``, edges replicated: ``scipy.ndimage.gaussian_filter(mode="nearest")``).
    Drawn and smoothed in float64 on the CPU, so the fields depend on ``generator`` only.

    Args:
        n: Number of fields (images).
        height: Image height ``H``.
        width: Image width ``W``.
        alpha: Scale of the displacement, pixels per unit of smoothed noise.
        sigma: Smoothing length in pixels, > 0.
        generator: CPU generator of the uniform draws.

    Returns:
        ``(n, 2, H, W)`` float64 displacements: channel 0 along the width (x), 1 along the
        height (y).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma!r}")
    noise = torch.rand((n, 2, height, width), generator=generator, dtype=torch.float64)
    return alpha * _blur(2.0 * noise - 1.0, sigma)


def _warp(images: Tensor, field: Tensor) -> Tensor:
    """``out[y, x] = images[y + field_y, x + field_x]``, bilinear, zeros outside the image.

    Args:
        images: ``(N, C, H, W)``.
        field: ``(N, 2, H, W)`` displacements in pixels (x, then y).

    Returns:
        ``(N, C, H, W)`` in the dtype of ``images``.
    """
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    # pixel centres at -1 and +1 for the first and last pixel (align_corners=True)
    gx = 2.0 * (xs.to(field.device) + field[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys.to(field.device) + field[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(images.dtype)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.clamp(0.0, 1.0)


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
