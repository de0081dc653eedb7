"""Argument checks shared by the framework callbacks (no framework imported).

A wrong type raises ``TypeError``, a wrong value ``ValueError``; each message names the
argument and what it accepts.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import torch

from swag.core._checks import check_bool, check_callable, check_count, check_device
from swag.family.averaging import AveragingRule, PostHocEMA


def check_rank_and_start(max_rank: object, start: object, unit: str) -> None:
    """``max_rank`` an int ≥ 0; ``start`` a ``unit`` (int ≥ 0: epoch or step) or a fraction in
    [0, 1) of training.

    Raises:
        TypeError: for a wrong type; ValueError: for a wrong value. Both name the argument.
    """
    check_count(max_rank, "max_rank", minimum=0)
    article = "an" if unit[0] in "aeiou" else "a"
    accepts = f"{article} {unit} (int >= 0) or a fraction in [0, 1)"
    if isinstance(start, bool) or not isinstance(start, numbers.Real):
        raise TypeError(f"start must be {accepts}, got {type(start).__name__} {start!r}")
    if isinstance(start, numbers.Integral):
        if start < 0:
            raise ValueError(f"start must be {accepts}, got {start!r}")
        return
    number = float(start)
    if not 0 <= number < 1:
        hint = ""
        if math.isfinite(number) and number >= 1 and number.is_integer():
            hint = (
                f"; a float is read as a fraction of training, so for {unit} {int(number)} "
                f"pass the int start={int(number)}"
            )
        raise ValueError(f"start must be {accepts}, got {start!r}{hint}")


def check_params(params: object) -> None:
    """``params`` is what :class:`swag.Collector` takes: None, a prefix, prefixes, a predicate."""
    ok = (
        params is None
        or isinstance(params, str)
        or callable(params)
        or (isinstance(params, list | tuple) and all(isinstance(p, str) for p in params))
    )
    if not ok:
        raise TypeError(
            "params must be None, a name prefix (str), a list of prefixes or a predicate "
            f"(name, param) -> bool, got {type(params).__name__} {params!r}"
        )


def check_dtype(dtype: object) -> None:
    """``dtype`` a floating-point ``torch.dtype`` (the Collector refuses float16 itself)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (e.g. torch.float32), got {dtype}")


def check_average(average: object) -> None:
    """``average`` None or a rule of :mod:`swag.averaging` (``EMA``, ``PowerEMA``, ``LAWA``)."""
    if average is not None and not isinstance(average, AveragingRule):
        hint = (
            "; PostHocEMA keeps its own snapshots: call its collect() in your loop"
            if isinstance(average, PostHocEMA)
            else ""
        )
        raise TypeError(
            "average must be None or a rule from swag.averaging (swag.EMA, swag.PowerEMA, "
            f"swag.LAWA), got {type(average).__name__} {average!r}{hint}"
        )


def check_common(params: object, dtype: object, device: object, average: object) -> None:
    """The arguments both callbacks pass on to :class:`swag.Collector`."""
    check_params(params)
    check_dtype(dtype)
    check_device(device)
    check_average(average)


def check_path(value: object, name: str) -> None:
    """``value`` a path (str or ``os.PathLike``) or None."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a folder path (str or PathLike) or None, got {value!r}")


def check_lightning_extras(
    bn_update: object, input_fn: Callable[[Any], Any] | None, bn_batches: object, shard: object
) -> None:
    """The Lightning callback's BatchNorm-refresh and sharding arguments."""
    check_bool(bn_update, "bn_update")
    check_callable(input_fn, "input_fn")
    check_count(bn_batches, "bn_batches", optional=True)
    check_bool(shard, "shard")


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError raised when ``package`` is absent: it names the extra that installs it."""
    return ImportError(
        f"swag.integrations.{extra} needs the {package!r} package, which is not installed: "
        f"pip install 'swag-toolkit[{extra}]'"
    )
