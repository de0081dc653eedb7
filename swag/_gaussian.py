"""Drawing from the SWAG Gaussian, whole or one shard's entries (shared by the posteriors)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from swag._checks import SampleShape, check_bool, check_generator, check_scale, check_shape


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
