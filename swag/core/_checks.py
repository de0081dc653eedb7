"""Argument checks shared by the public functions; each error names the argument and the fix.

One rule: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value. ``scale`` (and its
per-mode default), ``sample_shape``, counts, flags, loaders, callables; and what the collector
refuses: its arguments, models it cannot store, iterates with NaN/inf or values that overflow.
None of the checks changes any state.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any, NoReturn, SupportsIndex

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

SampleShape = int | Sequence[int] | torch.Size

FULL_SCALE = 0.5
"""Default ``scale`` of full SWAG: the paper's ½(Σ_diag + Σ_low-rank)."""
DIAGONAL_SCALE = 1.0
"""Default ``scale`` of SWAG-Diag (``diagonal=True``), as in the paper."""


def check_scale(scale: object, diagonal: object, *, name: str = "scale") -> float:
    """``scale`` as a float: None gives the mode's default, 1.0 diagonal and 0.5 full.

    Raises:
        TypeError: if ``scale`` is not a real number (a bool or a tensor is refused too).
        ValueError: if it is NaN, infinite or negative.
    """
    check_bool(diagonal, "diagonal")
    if scale is None:
        return DIAGONAL_SCALE if diagonal else FULL_SCALE
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (float) or None for the default, got "
            f"{type(scale).__name__}" + ("; pass float(t) for a tensor" if _tensor(scale) else "")
        )
    value = float(scale)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 and finite, got {scale!r}")
    return value


def check_shape(sample_shape: object) -> tuple[int, ...]:
    """``sample_shape`` as a tuple of non-negative ints (numpy integers are accepted).

    Raises:
        TypeError: for a float, a bool or anything else that is not an integer (or a sequence
            of them).
        ValueError: for a negative size.
    """
    if isinstance(sample_shape, (str, bytes)):
        raise TypeError(f"sample_shape must be an int or a sequence of ints, got {sample_shape!r}")
    entries = sample_shape if isinstance(sample_shape, Sequence) else (sample_shape,)
    sizes = []
    for item in entries:
        if isinstance(item, bool) or not isinstance(item, SupportsIndex):
            _not_an_int(sample_shape, item)
        size = operator.index(item)
        if size < 0:
            raise ValueError(f"sample_shape must not hold negative sizes, got {sample_shape!r}")
        sizes.append(size)
    return tuple(sizes)


def _not_an_int(sample_shape: object, item: object) -> NoReturn:
    raise TypeError(
        f"sample_shape must be an int or a sequence of ints (numpy integers are fine), got "
        f"{sample_shape!r} (the entry {item!r} is a {type(item).__name__})"
    )


def check_bool(value: object, name: str) -> None:
    """Raises TypeError unless ``value`` is a bool (a truthy string would silently act as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_generator(generator: object) -> None:
    """Raises TypeError unless ``generator`` is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "build one with torch.Generator().manual_seed(seed)"
        )


def _tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor)


def check_count(value: object, name: str, *, minimum: int = 1, optional: bool = False) -> None:
    """Raises unless ``value`` is an int >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int >= {minimum}"
            + (" or None" if optional else "")
            + f", got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def check_loader(loader: Any, name: str, *, empty_ok: bool = False) -> None:
    """Raises unless ``loader`` is iterable, and not empty where its length is known."""
    if isinstance(loader, (str, bytes, torch.Tensor)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of batches (a DataLoader or a list), got "
            f"{type(loader).__name__}" + ("; wrap one batch as [x]" if _tensor(loader) else "")
        )
    if not empty_ok and known_length(loader) == 0:
        raise ValueError(f"{name} is empty: it yielded no batch")


def known_length(loader: object) -> int | None:
    """``len(loader)``, or None when it has none or cannot tell.

    A ``DataLoader`` always defines ``__len__``, but over an ``IterableDataset`` without one
    it raises ``TypeError``: such a loader is still a fine fixed-order loader.
    """
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


def check_callable(fn: Any, name: str) -> None:
    """Raises unless ``fn`` is callable or None."""
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be a callable or None, got {type(fn).__name__}")


def check_device(device: Any) -> None:
    """Raises unless ``device`` is None, a ``torch.device`` or a device string / index."""
    if device is None or isinstance(device, torch.device):
        return
    if isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            torch.device(device)
            return
        except RuntimeError as err:
            raise ValueError(f"device {device!r} is not a valid torch device: {err}") from None
    raise TypeError(f"device must be a torch.device, a string or None, got {type(device).__name__}")


def check_reiterable(loader: Any, name: str) -> None:
    """Raises unless ``loader`` is an iterable of batches that can be walked more than once.

    An iterator (a generator, ``iter(loader)``, ``map(...)``) is its own iterator and is used up
    by the first pass: a second pass would silently see no batch. A list, a tuple or a
    ``DataLoader`` gives a fresh iterator per pass.
    """
    check_loader(loader, name)
    if isinstance(loader, Iterator):
        raise TypeError(
            f"{name} is a one-shot iterator ({type(loader).__name__}) but is walked more than "
            "once; pass a list of the batches or a DataLoader"
        )


def check_positive(value: object, name: str, *, zero_ok: bool = False) -> float:
    """``value`` as a float, refused unless it is a finite real number > 0 (>= 0 if ``zero_ok``).

    Raises:
        TypeError: for anything that is not a real number (a bool or a string too).
        ValueError: for NaN, ±inf or a value below the bound.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (out == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return out


def check_real(
    value: object, name: str, *, minimum: float | None = None, strict: bool = False
) -> float:
    """``value`` as a finite float, at least ``minimum`` (above it when ``strict``).

    Raises:
        TypeError: unless ``value`` is a real number (a bool, a string or a tensor is refused).
        ValueError: if it is NaN or infinite, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
            + ("; pass float(t) for a tensor" if _tensor(value) else "")
        )
    number = float(value)
    bound = "" if minimum is None else f" and {'>' if strict else '>='} {minimum:g}"
    if (
        not math.isfinite(number)
        or (minimum is not None and number < minimum)
        or (strict and number == minimum)
    ):
        raise ValueError(f"{name} must be finite{bound}, got {value!r}")
    return number


def check_state_dict(state_dict: object, name: str = "state_dict") -> None:
    """Raises TypeError unless ``state_dict`` is a dict (a mapping from ``state_dict()``)."""
    if not isinstance(state_dict, dict):
        raise TypeError(
            f"{name} must be a dict, as returned by state_dict(), got {type(state_dict).__name__}"
        )


# -- the collector ---------------------------------------------------------------------------


def check_collector_args(
    max_rank: object,
    dtype: object,
    deviation_dtype: object,
    shard: object,
    compiled: object,
    model: object,
) -> None:
    """Refuse bad :class:`~swag.Collector` arguments, naming them.

    Half-precision statistics are refused, not warned about: they are wrong in ordinary use.
    Means and Welford's M2 accumulate increments of order σ²/n, which bfloat16's 8 significant
    bits round away after a few hundred collects; float16 underflows the σ² of typical weights
    (1e-8 and below; its smallest subnormal is 6e-8) to 0 and overflows above 65504. A
    bfloat16 ring is fine: it is only stored.

    Raises:
        TypeError: ``max_rank`` not an int, a dtype that is not a ``torch.dtype``, ``shard``
            or ``compiled`` not a bool.
        ValueError: a negative ``max_rank``, a non-floating or half dtype, a model with
            uninitialised (lazy) parameters.
        RuntimeError: under ``torch.inference_mode()`` (the state would be inference tensors).
    """
    check_count(max_rank, "max_rank", minimum=0)
    for name, dt in (("dtype", dtype), ("deviation_dtype", deviation_dtype)):
        if not isinstance(dt, torch.dtype):
            raise TypeError(f"{name} must be a torch.dtype such as torch.float32, got {dt!r}")
        if not dt.is_floating_point:
            raise ValueError(f"{name} must be a floating-point dtype, got {dt}")
    check_statistics_dtype(dtype)
    if deviation_dtype == torch.float16:
        raise ValueError(
            "deviation_dtype=torch.float16 is refused: the deviations of typical weights "
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
    _check_initialised(model)


def check_statistics_dtype(dtype: object) -> None:
    """Refuse half-precision statistics (bfloat16, float16), recommending a bfloat16 ring."""
    if dtype in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype={dtype} is refused: the statistics (running mean and M2) accumulate "
            "small increments that half precision rounds away (bfloat16's variance drifts to "
            "about half the truth after a few thousand collects; float16 underflows σ² to 0). "
            "Keep the statistics in float32 and store the deviation ring in reduced "
            "precision: Collector(model, dtype=torch.float32, deviation_dtype=torch.bfloat16)"
        )


def _check_initialised(model: object) -> None:
    """Refuse a model with uninitialised lazy parameters (``nn.LazyLinear`` before a forward)."""
    if not isinstance(model, nn.Module):
        return  # ParamLayout.from_model names the wrong type
    lazy = [
        f"{name or 'the model'} ({type(module).__name__})"
        for name, module in model.named_modules()
        if any(is_lazy(p) for p in module.parameters(recurse=False))
    ]
    if lazy:
        raise ValueError(
            f"the modules {lazy[:5]} have uninitialised (lazy) parameters, whose shapes are not "
            "known yet. Run one forward pass on a batch first (model(x)), then create the "
            "Collector"
        )


def check_storage(
    names: Sequence[str], tensors: Sequence[Tensor], device: torch.device | str | None
) -> torch.device:
    """Where the statistics live: ``device``, or the parameters' one device.

    Raises:
        ValueError: for parameters (or a ``device``) on the ``meta`` device, which hold no
            values, or parameters on several devices without ``device``.
    """
    meta = [n for n, t in zip(names, tensors, strict=True) if t.device.type == "meta"]
    if meta or (device is not None and torch.device(device).type == "meta"):
        where = f"parameters {meta[:5]} are" if meta else "device='meta' is"
        raise ValueError(
            f"the {where} on the meta device, which holds shapes but no values. Materialise "
            "the model first (model.to_empty(device=...) then load or initialise its weights) "
            "and create the Collector after that, on a real device"
        )
    if device is not None:
        return torch.device(device)
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"the covered parameters live on several devices {sorted(map(str, devices))}; "
            "pass device= to say where the statistics should live"
        )
    return devices.pop()


def check_min_variance(min_variance: object) -> float:
    """``min_variance`` as a float: a finite number >= 0 (a floor for σ²).

    Raises:
        TypeError: unless it is a real number (a bool or a string is refused).
        ValueError: if it is NaN, infinite or negative.
    """
    if isinstance(min_variance, bool) or not isinstance(min_variance, numbers.Real):
        raise TypeError(
            f"min_variance must be a finite number >= 0 (a floor for σ²), got "
            f"{type(min_variance).__name__} {min_variance!r}"
        )
    value = float(min_variance)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"min_variance must be a finite number >= 0 (a floor for σ²), got {min_variance!r}"
        )
    return value


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


def check_iterate(
    n: int,
    names: Sequence[str],
    flats: Sequence[Tensor],
    written: Sequence[Tensor] | None,
    dtypes: tuple[Sequence[torch.dtype], Sequence[int], torch.dtype],
    device: torch.device,
    agree: Callable[[bool], bool] | None = None,
) -> None:
    """Refuse iterate ``n``, before any write, if it has NaN/inf or would overflow when stored.

    Besides NaN/inf in the parameters ``flats`` themselves, checks what is written: parameters
    of a wider dtype than the statistics' (float64 into float32) must fit when cast, and
    ``written`` (``θ_n − θ_1`` in the statistics' dtype, when the caller has it) must be finite.
    ``dtypes`` are the parameters' sum dtypes, the indices of the wider ones, and the
    statistics' dtype. ``agree`` (sharded) tells whether any rank found a problem, so that the
    ranks refuse together: a NaN in one rank's rows must not be recorded by the others.
    """
    sum_dtypes, wider, dtype = dtypes
    bad = nonfinite(names, flats, sum_dtypes, device)
    huge = [] if bad else overflowing(names, flats, wider, dtype)
    if not bad and not huge and written is not None:
        huge = nonfinite(names, written, None, device)
    elsewhere = agree is not None and agree(bool(bad or huge))
    if elsewhere and not (bad or huge):
        raise ValueError(
            f"iterate {n} has NaN or inf in another rank's shard; nothing was recorded on any "
            "rank. Lower the learning rate or skip this step."
        )
    if bad:
        raise ValueError(
            f"iterate {n} has NaN or inf in {bad[:5]}; nothing was recorded. "
            "Lower the learning rate or skip this step."
        )
    if huge:
        raise ValueError(
            f"iterate {n} has values in {huge[:5]} that overflow to inf in the "
            f"statistics' dtype {dtype}; nothing was recorded. Collect with "
            "dtype=torch.float64, or keep the parameters in range."
        )
