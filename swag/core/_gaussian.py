"""Gaussians: SWAG's from a collector's statistics; drawing from it, whole or one shard's
entries (shared by the posteriors); checking the ``(mean, variance)`` of a regression head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from swag.core._checks import SampleShape, check_bool, check_generator, check_scale, check_shape


def swag_gaussian(
    mean: Tensor, m2: Tensor, ring: Tensor, n: int, divisor: float, min_variance: float
) -> tuple[Tensor, Tensor, Tensor]:
    """SWAG's Gaussian from a collector's statistics after ``n`` iterates (new tensors).

    ``mean`` ``(P,)``; ``σ = sqrt(max(m2 / divisor, min_variance))`` ``(P,)``; the deviation
    ``ring`` ``(K, P)`` (row ``(i − 1) % K`` holds iterate ``i``) as its ``min(n, K)`` rows,
    oldest first.

    Raises:
        ValueError: if the statistics overflowed their dtype (inf σ or mean).
    """
    k = ring.shape[0]
    rank, cursor = min(n, k), n % k if k else 0
    std = (m2 / divisor).clamp_min_(min_variance).sqrt_()
    if not (bool(std.isfinite().all()) and bool(mean.isfinite().all())):
        # collect() refuses what overflows when written, except M2 = Σ (θ − θ̄)², whose
        # terms overflow float32 only for deviations beyond ~1e19: caught here, not hidden
        raise ValueError(
            f"the statistics overflowed their dtype {m2.dtype} (iterates that far "
            "apart, or min_variance that large, give inf σ); collect with "
            "dtype=torch.float64, or keep the parameters in range"
        )
    # Oldest first; torch.cat already copies, so the ring is copied once either way.
    kept = ring[:rank]
    ordered = torch.cat([kept[cursor:], kept[:cursor]]) if n > k else kept.clone()
    return mean, std, ordered


def draw(
    mean: Tensor,
    std: Tensor,
    deviations: Tensor,
    sample_shape: SampleShape,
    size: int,
    spans: Sequence[tuple[int, int]],
    *,
    scale: float | None,
    diagonal: bool,
    blockwise: bool,
    generator: torch.Generator | None,
    take: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """Draws ``mean + √scale · (std ⊙ z₁ + D̂ᵀ z₂ / √(K − 1))``, shape ``(*sample_shape, L)``.

    The low-rank term is dropped when ``diagonal`` or K < 2. z₂ ``(num, blocks, K)`` is drawn
    before z₁ ``(num, size)``; ``take`` (default: all of it)
    picks the ``L`` entries that ``mean``, ``std`` and ``deviations`` ``(K, L)`` describe, so a
    shard of the statistics draws exactly its entries of the unsharded sample. ``spans`` lists
    each parameter's ``(offset, numel)`` in the ``L`` entries (the blocks of ``blockwise``).
    ``scale=None`` is the mode's default (1.0 with ``diagonal``, else 0.5); a NaN, infinite or
    negative one is refused.
    """
    scale = check_scale(scale, diagonal)
    check_bool(blockwise, "blockwise")
    check_generator(generator)
    shape = check_shape(sample_shape)
    num = math.prod(shape)
    dev, dt = mean.device, mean.dtype
    blocks = len(spans) if blockwise else 1
    k = deviations.shape[0]
    coef = lowrank_coef(k, diagonal)
    z2 = torch.randn(num, blocks, k, device=dev, dtype=dt, generator=generator) if coef else None
    out = torch.randn(num, size, device=dev, dtype=dt, generator=generator)
    if take is not None:
        out = take(out)
    torch.addcmul(mean, out, std, value=math.sqrt(scale), out=out)
    if z2 is not None:
        alpha = math.sqrt(scale) * coef
        d = deviations
        if blockwise:
            for b, (o, m) in enumerate(spans):
                out[:, o : o + m] += alpha * (z2[:, b].to(d.dtype) @ d[:, o : o + m]).to(out.dtype)
        elif d.dtype == out.dtype:
            out.addmm_(z2[:, 0], d, alpha=alpha)
        else:
            out.add_((z2[:, 0].to(d.dtype) @ d).to(out.dtype), alpha=alpha)
    return out.view(*shape, out.shape[-1])


def lowrank_coef(rank: int, diagonal: bool) -> float:
    """1/√(K−1), or 0 when the low-rank term is off (``diagonal``, or under 2 deviations)."""
    return 0.0 if diagonal or rank < 2 else 1.0 / math.sqrt(rank - 1)


def check_head(out: Any) -> None:
    """Refuse a ``(mean, variance)`` pair whose shapes differ.

    A mean ``(B,)`` with a variance ``(B, 1)`` (or the reverse) would broadcast into a
    ``(B, B)`` variance when the passes are combined: silently wrong, so it is refused with
    both shapes. Anything else is left to the reduction, which names what it expects.
    """
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return
    mean, var = out
    if isinstance(mean, Tensor) and isinstance(var, Tensor) and mean.shape != var.shape:
        raise ValueError(
            f"for output='gaussian' the model returned a mean of shape {tuple(mean.shape)} and "
            f"a variance of shape {tuple(var.shape)}; they must have the same shape (they "
            "would broadcast into a wrong one). Align them with output_fn=, e.g. "
            "output_fn=lambda out: (out[0].squeeze(-1), out[1].squeeze(-1))"
        )
