"""What the collector refuses: bad arguments, values it cannot store, damaged states.

Each check names what is wrong and the fix; none of them changes any state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from swag.core.layout import ParamLayout


def check_args(
    max_rank: int, dtype: torch.dtype, deviation_dtype: torch.dtype, shard: bool, compiled: bool
) -> None:
    """Refuse bad :class:`~swag.Collector` arguments, naming them.

    float16 statistics are refused, not warned about: they are wrong in ordinary use. σ² of
    typical weights (1e-8 and below) underflows float16's smallest subnormal (6e-8) to 0, and
    values above 65504 overflow; bfloat16 costs the same memory with float32's range.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 0:
        raise ValueError(f"max_rank must be an int >= 0, got {max_rank!r}")
    for name, dt in (("dtype", dtype), ("deviation_dtype", deviation_dtype)):
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise ValueError(f"{name} must be a floating-point dtype, got {dt}")
        if dt == torch.float16:
            raise ValueError(
                f"{name}=torch.float16 is refused: σ² and the deviations of typical weights "
                "(1e-8 and below) underflow float16 to 0, and values above 65504 overflow to "
                "inf. Use torch.bfloat16 (same memory, float32's range) or torch.float32"
            )
    for name, flag in (("shard", shard), ("compiled", compiled)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "a Collector cannot be created under torch.inference_mode(): its statistics would "
            "be inference tensors, which collect() cannot update afterwards. Create it outside "
            "inference_mode (collect() itself runs without autograd)"
        )


def check_storage(
    layout: ParamLayout, tensors: list[Tensor], device: torch.device | str | None
) -> None:
    """Refuse parameters (or a ``device``) on the ``meta`` device: there are no values."""
    meta = [n for n, t in zip(layout.names, tensors, strict=True) if t.device.type == "meta"]
    if meta or (device is not None and torch.device(device).type == "meta"):
        where = f"parameters {meta[:5]} are" if meta else "device='meta' is"
        raise ValueError(
            f"the {where} on the meta device, which holds shapes but no values. Materialise "
            "the model first (model.to_empty(device=...) then load or initialise its weights) "
            "and create the Collector after that, on a real device"
        )


def check_min_variance(min_variance: float) -> None:
    """Refuse a ``min_variance`` that is not a finite number >= 0."""
    if (
        isinstance(min_variance, bool)
        or not isinstance(min_variance, (int, float))
        or not math.isfinite(min_variance)
        or min_variance < 0
    ):
        raise ValueError(
            f"min_variance must be a finite number >= 0 (a floor for σ²), got {min_variance!r}"
        )


def nonfinite(
    names: Sequence[str],
    flats: Sequence[Tensor],
    sum_dtypes: Sequence[torch.dtype] | None,
    device: torch.device,
) -> list[str]:
    """Names of the tensors in ``flats`` with NaN/inf entries.

    One read of each tensor: a sum is NaN/inf whenever an entry is. Its only false alarm, a
    finite sum overflowing (|Σθ| > 3e38 in float32), is re-checked entry-wise. ``sum_dtypes``
    (one per tensor; default: its own) should be at least float32, so half sums do not overflow.
    """
    dts = sum_dtypes or [t.dtype for t in flats]
    sums = torch.stack([t.sum(dtype=dt).to(device) for t, dt in zip(flats, dts, strict=True)])
    if bool(torch.isfinite(sums).all()):
        return []
    return [n for n, t in zip(names, flats, strict=True) if not t.isfinite().all()]


def overflowing(
    names: Sequence[str], flats: Sequence[Tensor], wider: Sequence[int], dtype: torch.dtype
) -> list[str]:
    """Names of the tensors ``flats[i]``, ``i`` in ``wider``, with values beyond ``dtype``.

    For parameters of a wider dtype than the statistics' (float64 into float32): finite where
    they are, they may still be stored as inf. One ``aminmax`` per such tensor.
    """
    out = []
    for i in wider:
        if flats[i].numel():
            ends = torch.stack(torch.aminmax(flats[i])).to(dtype)
            if not bool(ends.isfinite().all()):
                out.append(names[i])
    return out


def state_problem(
    state_dict: dict[str, Any],
    prefix: str,
    mine: dict[str, Tensor],
    describe_mismatch: Callable[[dict[str, str]], str | None],
) -> str | None:
    """What is wrong with ``state_dict`` as a collector's state; ``None`` if it fits.

    Checks the metadata (``describe_mismatch``: layout, ``max_rank``, dtypes, shard; and ``n``)
    and every statistic of ``mine`` (the collector's buffers by name): present, a tensor of the
    same shape and dtype, finite (``m2`` >= 0).
    """
    extra = state_dict.get(prefix + "_extra_state")
    if not isinstance(extra, dict):
        return "the state has no swag collector metadata"
    problem = describe_mismatch({k: str(v) for k, v in extra.items()})
    if problem:
        return problem
    n = extra.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"n must be an integer >= 0, got {n!r}"
    for name, buf in mine.items():
        key = prefix + name
        t = state_dict.get(key)
        if t is None:
            return f"{key} is missing (a partial state is never loaded)"
        if not isinstance(t, Tensor):
            return f"{key} is a {type(t).__name__}, not a tensor"
        if t.shape != buf.shape or t.dtype != buf.dtype:
            return (
                f"{key} has shape {tuple(t.shape)} {t.dtype}, expected "
                f"{tuple(buf.shape)} {buf.dtype}"
            )
        if not bool(t.isfinite().all()) or (name == "m2" and bool((t < 0).any())):
            return f"{key} holds NaN, inf or a negative M2: it is damaged"
    return None
