"""Naive float64 re-implementations used as test oracles. Slow and obvious on purpose."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def flat_params(model: nn.Module) -> np.ndarray:
    """All parameters of ``model`` concatenated, as float64 numpy."""
    return np.concatenate([p.detach().double().reshape(-1).numpy() for p in model.parameters()])


def two_pass_moments(iterates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance (divide by n) of ``iterates`` ``(n, P)``, two-pass float64."""
    x = np.asarray(iterates, dtype=np.float64)
    mean = x.sum(axis=0) / len(x)
    var = ((x - mean) ** 2).sum(axis=0) / len(x)
    return mean, var


def last_deviations(iterates: np.ndarray, k: int) -> np.ndarray:
    """The last ``k`` deviations θ_i − mean(θ_1..θ_i), oldest first, shape ``(min(n, k), P)``."""
    x = np.asarray(iterates, dtype=np.float64)
    rows = [x[i] - x[: i + 1].mean(axis=0) for i in range(len(x))]
    return np.stack(rows[-k:]) if k else np.zeros((0, x.shape[1]))


def swag_covariance(
    var: np.ndarray, deviations: np.ndarray, scale: float, diagonal: bool = False
) -> np.ndarray:
    """Dense scale · (diag σ² + DᵀD / (K − 1)), low-rank part dropped when K < 2 or diagonal."""
    cov = np.diag(np.asarray(var, dtype=np.float64))
    k = len(deviations)
    if k >= 2 and not diagonal:
        d = np.asarray(deviations, dtype=np.float64)
        cov = cov + d.T @ d / (k - 1)
    return scale * cov


def random_walk(
    model: nn.Module, steps: int, generator: torch.Generator, step_size: float = 0.1
) -> None:
    """Move every parameter of ``model`` by one Gaussian step (stands in for SGD)."""
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.add_(noise.to(p.device), alpha=step_size)
