"""Misuse of every public argument of swag.schedules, swag.snapshots and swag.optim (issue 13):
each gets the exact TypeError/ValueError naming it. The review's other cases (closures that do not
zero gradients, manual two-pass steps, sparse gradients, bf16 / channels_last / tied / compiled
models, mid-run resume, damaged snapshot states, torch's schedulers composed with ours) live with
their modules' tests: test_optim.py, test_snapshots.py, test_schedules.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import swag
from swag.optim import SAM
from swag.schedules import CollectEvery, Cyclic, SWAGDecay, cyclic_schedule, swag_schedule
from swag.snapshots import Snapshots, multi_swa

NAN, INF = math.nan, math.inf


def sgd(model: nn.Module | None = None, **kw: Any) -> torch.optim.SGD:
    return torch.optim.SGD((model or nn.Linear(2, 1)).parameters(), lr=0.1, **kw)


def taken(n: int) -> Snapshots:
    snaps = Snapshots(nn.Linear(2, 1), max_snapshots=2)
    for _ in range(n):
        snaps.collect()
    return snaps


# (label, call, exception, regex naming the argument)
MISUSE: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("every=0", lambda: CollectEvery(0, 1), ValueError, "every must be an int >= 1"),
    ("steps_done float", lambda: CollectEvery(2, 1)(1.5), TypeError, "steps_done must be"),
    ("final nan", lambda: SWAGDecay(10, NAN), ValueError, "final must be finite"),
    ("final inf", lambda: SWAGDecay(10, INF), ValueError, "final must be finite"),
    ("final str", lambda: SWAGDecay(10, "0.1"), TypeError, "final must be a real"),
    ("decay_start str", lambda: SWAGDecay(10, 0.1, "a"), TypeError, "decay_start must be"),
    ("cycle 0", lambda: Cyclic(0, 0.1), ValueError, "cycle must be an int >= 1"),
    ("low inf", lambda: Cyclic(4, INF), ValueError, "low must be finite"),
    ("low > 1", lambda: Cyclic(4, 2.0), ValueError, "low .* must be <= 1"),
    ("shape", lambda: Cyclic(4, 0.1, "sine"), ValueError, "shape must be one of"),
    (
        "swag optimizer",
        lambda: swag_schedule(nn.Linear(2, 1), swa_start=5, swa_lr=0.01),
        TypeError,
        "optimizer must be",
    ),
    (
        "swa_lr str",
        lambda: swag_schedule(sgd(), swa_start=5, swa_lr="0.01"),
        TypeError,
        "swa_lr must be a rate",
    ),
    (
        "swa_lr inf",
        lambda: swag_schedule(sgd(), swa_start=5, swa_lr=INF),
        ValueError,
        "swa_lr must be finite",
    ),
    (
        "min_lr bool",
        lambda: cyclic_schedule(sgd(), cycle=4, min_lr=True),
        TypeError,
        "min_lr must be a real",
    ),
    (
        "min_lr > lr",
        lambda: cyclic_schedule(sgd(), cycle=4, min_lr=1.0),
        ValueError,
        "swap the two rates",
    ),
    ("snap model", lambda: Snapshots("net", 2), TypeError, "model must be the nn.Module"),
    (
        "snap dtype",
        lambda: Snapshots(nn.Linear(2, 1), 2, dtype="float32"),
        TypeError,
        "dtype must be a torch.dtype",
    ),
    ("collect model", lambda: taken(0).collect("net"), TypeError, "model must be the nn.Module"),
    ("collect other layout", lambda: taken(0).collect(nn.Linear(3, 1)), ValueError, "layout"),
    ("multi_swa type", lambda: multi_swa([nn.Linear(2, 1)]), TypeError, r"runs\[0\] must be"),
    (
        "multi_swa empty run",
        lambda: multi_swa([taken(1), taken(0)]),
        ValueError,
        r"runs\[1\] collected nothing",
    ),
    (
        "multi_swa empty collector",
        lambda: multi_swa([swag.Collector(nn.Linear(2, 1), max_rank=2)]),
        ValueError,
        "collected nothing",
    ),
    ("rho 0", lambda: SAM(sgd(), rho=0), ValueError, "rho must be finite and > 0"),
    ("rho inf", lambda: SAM(sgd(), rho=INF), ValueError, "rho must be finite and > 0"),
    ("rho str", lambda: SAM(sgd(), rho="0.05"), TypeError, "rho must be a real"),
    ("eta inf", lambda: SAM(sgd(), eta=INF), ValueError, "eta must be finite"),
    ("adaptive str", lambda: SAM(sgd(), adaptive="no"), TypeError, "adaptive must be True"),
    (
        "max_grad_norm inf",
        lambda: SAM(sgd(), max_grad_norm=INF),
        ValueError,
        "max_grad_norm must be",
    ),
    ("sam model", lambda: SAM(sgd(), model="net"), TypeError, "model must be the nn.Module"),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), [m[1:] for m in MISUSE], ids=[m[0] for m in MISUSE]
)
def test_misuse_is_named(call: Callable[[], object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()
