"""Learning-rate schedules of the SWA family, as ``LambdaLR`` factors, and when to collect.

Each schedule is a small frozen dataclass: called with a step ``k`` (the number of
``scheduler.step()`` calls so far, so ``k = 0`` for the first optimizer step) it returns the
factor by which ``torch.optim.lr_scheduler.LambdaLR`` multiplies a group's base rate. Being
objects, not lambdas, they survive ``scheduler.state_dict()``. The factories
(:func:`swag_schedule`, :func:`cyclic_schedule`) take absolute rates, as ``SWALR`` does, and
build the ``LambdaLR`` for any optimizer. A "step" is whatever you step the scheduler on:
an optimizer step or an epoch.

:class:`CollectEvery` says when to call ``collect()``: every ``n`` steps from a first one, as
the schedules' ``collect_every(...)`` / :attr:`Cyclic.collect` give it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["CollectEvery", "Cyclic", "SWAGDecay", "Shape", "cyclic_schedule", "swag_schedule"]

Shape = Literal["linear", "triangle", "cosine"]
_SHAPES = ("linear", "triangle", "cosine")


def _check_int(name: str, value: object, low: int) -> None:
    """TypeError unless ``value`` is an int (not a bool), ValueError if it is below ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_real(name: str, value: object, what: str) -> float:
    """``value`` as a finite float >= 0; else an error naming ``name`` (described by ``what``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number ({what}), got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be finite and >= 0 ({what}), got {value}")
    return number


@dataclass(frozen=True)
class CollectEvery:
    """When to collect: after steps ``first``, ``first + every``, ``first + 2·every``, ...

    Call it with the number of optimizer (or epoch) steps *done*, i.e. after
    ``optimizer.step()``: ``if when(step): collector.collect()``.

    Example:
        >>> when = CollectEvery(every=3, first=10)
        >>> tuple(s for s in range(1, 20) if when(s))
        (10, 13, 16, 19)
    """

    every: int
    first: int

    def __post_init__(self) -> None:
        _check_int("every", self.every, 1)
        _check_int("first", self.first, 1)

    def __call__(self, steps_done: int) -> bool:
        done: object = steps_done  # checked: a float or tensor step count is a caller's bug
        if isinstance(done, bool) or not isinstance(done, numbers.Integral):
            raise TypeError(f"steps_done must be the int number of steps done, got {steps_done!r}")
        if steps_done < 0:
            raise ValueError(f"steps_done must be >= 0 (steps done), got {steps_done}")
        return steps_done >= self.first and (steps_done - self.first) % self.every == 0


@dataclass(frozen=True)
class SWAGDecay:
    """The SWAG paper's schedule, as a factor of the base rate ``lr``.

    With ``t = k / swa_start``: 1 for ``t ≤ decay_start``, then linear down to ``final`` at
    ``t = decay_end``, then ``final`` (= ``swa_lr / lr``) for ever, the constant-rate phase in
    which SWA/SWAG collect (from step ``swa_start`` on). With ``final = 0.01`` and ``swa_start``
    the whole run it is the paper's SGD baseline schedule.

    Example:
        >>> f = SWAGDecay(swa_start=10, final=0.1)
        >>> tuple(round(f(k), 3) for k in (0, 5, 7, 9, 10, 50))
        (1.0, 1.0, 0.55, 0.1, 0.1, 0.1)
    """

    swa_start: int
    final: float
    decay_start: float = 0.5
    decay_end: float = 0.9

    def __post_init__(self) -> None:
        _check_int("swa_start", self.swa_start, 1)
        _check_real("final", self.final, "swa_lr / lr")
        _check_real("decay_start", self.decay_start, "a fraction of swa_start")
        _check_real("decay_end", self.decay_end, "a fraction of swa_start")
        if not 0 <= self.decay_start < self.decay_end <= 1:
            raise ValueError(
                "need 0 <= decay_start < decay_end <= 1, got "
                f"decay_start={self.decay_start}, decay_end={self.decay_end}"
            )

    def __call__(self, k: int) -> float:
        """The factor at step (or epoch) ``k >= 0``."""
        _check_int("k", k, 0)
        t = k / self.swa_start
        if t <= self.decay_start:
            return 1.0
        if t >= self.decay_end:
            return self.final
        frac = (t - self.decay_start) / (self.decay_end - self.decay_start)
        return 1.0 + (self.final - 1.0) * frac

    def collect_every(self, every: int) -> CollectEvery:
        """Collect every ``every`` steps of the constant phase, the first ``every`` steps in."""
        return CollectEvery(every, self.swa_start + every)


@dataclass(frozen=True)
class Cyclic:
    """A cyclical schedule from ``start`` on, as a factor of the base rate α₁; 1 before it.

    Cycles last ``cycle`` steps; step ``k ≥ start`` is iteration ``i = k − start + 1`` of the
    cyclical phase, at position ``t = (((i − 1) mod c) + 1) / c`` in its cycle (the SWA paper's
    convention: ``t`` runs ``1/c, 2/c, ..., 1``). With ``low`` = α₂/α₁:

    - ``"linear"`` (SWA paper): ``(1 − t) + t · low``; α₂ on the last step of each cycle,
      then a restart at α₁;
    - ``"cosine"``: ``low + (1 − low)(1 + cos πt)/2``; also α₂ on the last step;
    - ``"triangle"`` (FGE paper): ``1 − 2t(1 − low)`` for ``t ≤ 1/2``, then back up
      linearly to 1 at ``t = 1``; α₂ at mid-cycle (``cycle`` must be even).

    :attr:`collect` says when the weights sit at the end of an α₂ step: after the last step of
    each cycle (mid-cycle for ``"triangle"``), where SWA averages and FGE takes its snapshots.

    Example:
        >>> f = Cyclic(cycle=4, low=0.1)
        >>> tuple(round(f(k), 3) for k in range(8))
        (0.775, 0.55, 0.325, 0.1, 0.775, 0.55, 0.325, 0.1)
        >>> tuple(s for s in range(1, 9) if f.collect(s))
        (4, 8)
    """

    cycle: int
    low: float
    shape: Shape = "linear"
    start: int = 0

    def __post_init__(self) -> None:
        _check_int("cycle", self.cycle, 1)
        _check_int("start", self.start, 0)
        if _check_real("low", self.low, "min_lr / lr") > 1:
            raise ValueError(
                f"low (min_lr / lr) must be <= 1: the cycle goes down from lr to min_lr, got "
                f"{self.low}; did you swap the two rates?"
            )
        if not isinstance(self.shape, str) or self.shape not in _SHAPES:
            raise ValueError(f"shape must be one of {_SHAPES}, got {self.shape!r}")
        if self.shape == "triangle" and self.cycle % 2:
            raise ValueError(
                f"a triangle cycle must have an even length (its minimum is at mid-cycle), "
                f"got cycle={self.cycle}"
            )

    def position(self, k: int) -> float:
        """``t`` in ``(0, 1]`` of step ``k ≥ start`` within its cycle."""
        _check_int("k", k, self.start)
        return ((k - self.start) % self.cycle + 1) / self.cycle

    def __call__(self, k: int) -> float:
        """The factor at step (or epoch) ``k >= 0``."""
        _check_int("k", k, 0)
        if k < self.start:
            return 1.0
        t = self.position(k)
        if self.shape == "linear":
            return (1 - t) + t * self.low
        if self.shape == "cosine":
            return self.low + (1 - self.low) * (1 + math.cos(math.pi * t)) / 2
        if t <= 0.5:
            return 1 - 2 * t * (1 - self.low)
        return self.low + (2 * t - 1) * (1 - self.low)

    @property
    def collect(self) -> CollectEvery:
        """Once per cycle, after its α₂ step (FGE's snapshots, the SWA paper's averaging)."""
        offset = self.cycle // 2 if self.shape == "triangle" else self.cycle
        return CollectEvery(self.cycle, self.start + offset)


def _base_lrs(optimizer: Optimizer) -> list[float]:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    # LambdaLR multiplies each group's "initial_lr" (set by the first scheduler), else its lr.
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


def _per_group(name: str, value: object, n: int) -> list[float]:
    if isinstance(value, str) or not isinstance(value, numbers.Real | Sequence):
        raise TypeError(
            f"{name} must be a rate or a sequence of one rate per parameter group, got {value!r}"
        )
    values = [value] * n if isinstance(value, numbers.Real) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} parameter groups")
    return [_check_real(name, v, "a learning rate") for v in values]


def swag_schedule(
    optimizer: Optimizer,
    *,
    swa_start: int,
    swa_lr: float | Sequence[float],
    decay_start: float = 0.5,
    decay_end: float = 0.9,
) -> LambdaLR:
    """The SWAG paper's schedule (:class:`SWAGDecay`) on ``optimizer``.

    Each group runs at its rate until ``decay_start · swa_start``, decays linearly to
    ``swa_lr`` by ``decay_end · swa_start``, and stays there.

    Args:
        optimizer: any optimizer; its groups' rates now are the base rates.
        swa_start: the step at which the constant phase (and collecting) starts.
        swa_lr: the constant rate, for every group or one per group (as ``SWALR``).
        decay_start: where the decay starts, as a fraction of ``swa_start``.
        decay_end: where it ends (the rate is ``swa_lr`` from there), likewise.
    """
    bases = _base_lrs(optimizer)
    targets = _per_group("swa_lr", swa_lr, len(bases))
    factors = [
        SWAGDecay(swa_start, _ratio(t, b), decay_start, decay_end)
        for t, b in zip(targets, bases, strict=True)
    ]
    return LambdaLR(optimizer, list(factors))


def cyclic_schedule(
    optimizer: Optimizer,
    *,
    cycle: int,
    min_lr: float | Sequence[float],
    shape: Shape = "linear",
    start: int = 0,
) -> LambdaLR:
    """A :class:`Cyclic` schedule on ``optimizer``: from each group's rate α₁ down to ``min_lr``.

    Args:
        optimizer: any optimizer; its groups' rates now are the α₁s.
        cycle: steps per cycle.
        min_lr: α₂, for every group or one per group.
        shape: ``"linear"`` (SWA), ``"cosine"`` or ``"triangle"`` (FGE).
        start: steps at the constant rate α₁ before the first cycle.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> sched = cyclic_schedule(opt, cycle=4, min_lr=0.01)
        >>> sched.lr_lambdas[0].collect
        CollectEvery(every=4, first=4)
    """
    bases = _base_lrs(optimizer)
    lows = _per_group("min_lr", min_lr, len(bases))
    factors = [Cyclic(cycle, _ratio(m, b), shape, start) for m, b in zip(lows, bases, strict=True)]
    return LambdaLR(optimizer, list(factors))


def _ratio(target: float, base: float) -> float:
    if base <= 0:
        raise ValueError(
            f"every parameter group needs a learning rate > 0 (the base rate the schedule "
            f"multiplies), got {base}"
        )
    return target / base
