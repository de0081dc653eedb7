"""Input checks shared by the metric functions: each returns validated float64/int64 tensors."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def as_float64(x: Tensor) -> Tensor:
    """Returns ``x`` as float64, on CPU when its device has no float64 support (MPS)."""
    if x.device.type == "mps":
        x = x.cpu()
    return x.to(torch.float64)


def check_float(x: Tensor, name: str, *, nonfinite_hint: str = "") -> Tensor:
    """Validates a non-empty, finite, floating-point tensor of any shape; returns it as float64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    x64 = as_float64(x)
    if not torch.isfinite(x64).all():
        raise ValueError(f"{name} contains NaN or inf{nonfinite_hint}")
    return x64


def check_probs(probs: Tensor, *, ndims: tuple[int, ...] = (2,), name: str = "probs") -> Tensor:
    """Validates class probabilities along the last dimension; returns them as float64.

    Rows must be finite, in [0, 1] and sum to 1 within ``max(1e-4, finfo(dtype).eps)``.
    """
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim not in ndims:
        shapes = " or ".join(_shape_name(n) for n in ndims)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(probs.shape)}")
    p = check_float(probs, name, nonfinite_hint="; check the model outputs")
    low, high = p.min().item(), p.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "pass probabilities (e.g. logits.softmax(-1)), not logits"
        )
    tol = max(1e-4, torch.finfo(probs.dtype).eps)
    worst = (p.sum(-1) - 1.0).abs().max().item()
    if worst > tol:
        raise ValueError(
            f"{name} must sum to 1 over the last (class) dimension within {tol:.1e}, "
            f"got a row off by {worst:.3g}; normalise with probs / probs.sum(-1, keepdim=True)"
        )
    return p


def check_targets(targets: Tensor, n: int, n_classes: int, device: torch.device) -> Tensor:
    """Validates ``(N,)`` integer class indices in ``[0, n_classes)``; returns int64."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be an integer tensor of class indices, got dtype {targets.dtype}; "
            "pass targets.long()"
        )
    if targets.shape != (n,):
        raise ValueError(
            f"targets must have shape ({n},) to match the {n} predictions, "
            f"got {tuple(targets.shape)}"
        )
    y = targets.to(device=device, dtype=torch.int64)
    low, high = y.min().item(), y.max().item()
    if low < 0 or high >= n_classes:
        raise ValueError(
            f"targets must lie in [0, {n_classes - 1}] for {n_classes} classes, "
            f"got values in [{low}, {high}]"
        )
    return y


def check_classification(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validates ``probs`` ``(N, C)`` and ``targets`` ``(N,)``; returns float64 and int64."""
    p = check_probs(probs)
    return p, check_targets(targets, p.shape[0], p.shape[1], p.device)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (int, float, numpy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_n_bins(n_bins: int) -> None:
    """Raises TypeError unless ``n_bins`` is an int, ValueError unless it is >= 1."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise TypeError(f"n_bins must be an integer >= 1, got {type(n_bins).__name__} {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")


def _shape_name(ndim: int) -> str:
    return {2: "(N, C)", 3: "(S, N, C)"}[ndim]


def looks_like_probabilities(logits: Tensor) -> bool:
    """Whether every row of supposed logits is non-negative and sums to 1 (within 1e-4).

    Logits rarely do; probabilities (a model ending in ``Softmax``) always do.
    """
    if logits.numel() == 0 or logits.shape[-1] < 2:
        return False
    z = logits.detach().to(torch.float64)
    return bool((z >= 0).all()) and bool(((z.sum(-1) - 1.0).abs() <= 1e-4).all())
