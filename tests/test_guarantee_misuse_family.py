# mypy: disable-error-code="arg-type"
# (the rows pass wrong types on purpose)
"""Misuse of every public function of the training-side family (issue 18, classes 11 and 7).

lowp, swap, snapshots, optim and schedules: each row is a wrong argument, the exception type
the standard asks for (TypeError for a wrong type, ValueError for a wrong value) and a regex
that names the argument. :func:`test_every_public_name_has_a_row` fails when a public function
or method of these modules has no row. Rows that failed on main (a raw AttributeError,
RuntimeError or TypeError from inside torch, an unnamed message, or no error at all) are marked
``# main: ...``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from torch import nn

from swag import lowp, optim, schedules, snapshots, swap
from swag.lowp import (
    BlockFloat,
    QuantizedOptimizer,
    Quantizer,
    quantize,
    quantize_model,
    representable,
)
from swag.optim import SAM, frozen_bn
from swag.schedules import CollectEvery, Cyclic, SWAGDecay, cyclic_schedule, swag_schedule
from swag.snapshots import Snapshots, multi_swa
from swag.swap import SWAP

NAN = math.nan
MODULES = (lowp, swap, snapshots, optim, schedules)


def sgd() -> torch.optim.SGD:
    return torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)


def snaps() -> Snapshots:
    return Snapshots(nn.Linear(2, 1), 2)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-rank gloo process group (a file rendezvous: no port), for SWAP's methods."""
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def swap_helper() -> SWAP:
    return SWAP(nn.Linear(2, 1), timeout=5.0)


def with_group(call: Callable[[], object]) -> Callable[[], object]:
    """Marks a row that needs the process group (``group`` fixture)."""
    call.needs_group = True  # type: ignore[attr-defined]
    return call


def pretend_initialised(call: Callable[[], object]) -> Callable[[], object]:
    """Runs ``call`` with torch.distributed reporting a process group (checks come first)."""

    def run() -> object:
        with mock.patch("torch.distributed.is_initialized", return_value=True):
            return call()

    return run


# (label "Owner.name: case", call, exception, regex naming the argument)
Row = tuple[str, Callable[[], object], type[Exception], str]
ROWS: list[Row] = [
    # lowp
    ("BlockFloat: word_length float", lambda: BlockFloat(word_length=8.5), TypeError, "word_length"),  # main: TypeError from <<  # noqa: E501
    ("BlockFloat: exponent_bits str", lambda: BlockFloat(exponent_bits="8"), TypeError, "exponent_bits"),  # main: TypeError from <=  # noqa: E501
    ("BlockFloat: word_length 30", lambda: BlockFloat(word_length=30), ValueError, "word_length"),
    ("BlockFloat: block", lambda: BlockFloat(block="col"), ValueError, "block"),
    ("quantize: x list", lambda: quantize([1.0]), TypeError, "x must be a torch.Tensor"),  # main: AttributeError  # noqa: E501
    ("quantize: fmt str", lambda: quantize(torch.ones(2), "8bit"), TypeError, "fmt must be"),  # main: AttributeError  # noqa: E501
    ("quantize: generator int", lambda: quantize(torch.ones(2), generator=3), TypeError, "generator"),  # main: torch's rand() message  # noqa: E501
    ("quantize: sparse x", lambda: quantize(torch.eye(2).to_sparse()), ValueError, "x must be a dense"),  # main: NotImplementedError  # noqa: E501
    ("quantize: int dtype", lambda: quantize(torch.ones(2, dtype=torch.int64)), ValueError, "floating"),  # noqa: E501
    ("quantize: bfloat16 too wide", lambda: quantize(torch.ones(2, dtype=torch.bfloat16), BlockFloat(word_length=16)), ValueError, "word_length"),  # main: silently off the grid  # noqa: E501
    ("representable: x list", lambda: representable([1.0]), TypeError, "x must be"),  # main: AttributeError  # noqa: E501
    ("Quantizer: forward str", lambda: Quantizer("8bit"), TypeError, "forward must be"),  # main: accepted, fails at the first forward  # noqa: E501
    ("Quantizer: backward int", lambda: Quantizer(backward=8), TypeError, "backward must be"),  # main: accepted  # noqa: E501
    ("Quantizer: generator", lambda: Quantizer(generator=1), TypeError, "generator"),  # main: accepted  # noqa: E501
    ("Quantizer.forward: x list", lambda: Quantizer()([1.0]), TypeError, "x must be"),  # main: AttributeError  # noqa: E501
    ("quantize_model: model str", lambda: quantize_model("net"), TypeError, "model must be"),  # main: AttributeError  # noqa: E501
    ("quantize_model: modules int", lambda: quantize_model(nn.Linear(2, 1), modules=3), TypeError, "modules must be"),  # main: TypeError 'int' not callable  # noqa: E501
    ("QuantizedOptimizer: optimizer", lambda: QuantizedOptimizer(nn.Linear(2, 1)), TypeError, "optimizer must be"),  # main: ValueError  # noqa: E501
    ("QuantizedOptimizer: weight int", lambda: QuantizedOptimizer(sgd(), weight=8), TypeError, "weight must be"),  # main: AttributeError  # noqa: E501
    ("QuantizedOptimizer: state_keys str", lambda: QuantizedOptimizer(sgd(), state_keys="momentum_buffer"), TypeError, "state_keys"),  # main: silently 15 one-letter keys  # noqa: E501
    ("QuantizedOptimizer: generator", lambda: QuantizedOptimizer(sgd(), generator="g"), TypeError, "generator"),  # main: torch's rand() message  # noqa: E501
    ("QuantizedOptimizer.zero_grad: set_to_none str", lambda: QuantizedOptimizer(sgd()).zero_grad("no"), TypeError, "set_to_none"),  # main: accepted as True  # noqa: E501
    ("QuantizedOptimizer.load_state_dict: str", lambda: QuantizedOptimizer(sgd()).load_state_dict("ckpt.pt"), TypeError, "state_dict must be a dict"),  # main: AttributeError  # noqa: E501
    ("QuantizedOptimizer.step: sparse gradient", lambda: _sparse_step(), ValueError, "sparse gradient"),  # main: NotImplementedError  # noqa: E501
    # swap
    ("SWAP: timeout nan", pretend_initialised(lambda: SWAP(nn.Linear(2, 1), timeout=NAN)), ValueError, "timeout"),  # main: accepted  # noqa: E501
    ("SWAP: timeout str", pretend_initialised(lambda: SWAP(nn.Linear(2, 1), timeout="5")), TypeError, "timeout"),  # main: TypeError from <=  # noqa: E501
    ("SWAP: timeout huge", pretend_initialised(lambda: SWAP(nn.Linear(2, 1), timeout=1e300)), ValueError, "timeout"),  # main: OverflowError  # noqa: E501
    ("SWAP: model str", pretend_initialised(lambda: SWAP("net")), TypeError, "model must be"),  # main: AttributeError later  # noqa: E501
    ("SWAP.reached: threshold nan", with_group(lambda: swap_helper().reached(1, 2, NAN)), ValueError, "threshold"),  # noqa: E501
    ("SWAP.reached: correct str", with_group(lambda: swap_helper().reached("1", 2, 0.5)), TypeError, "correct"),  # main: float('1') accepted  # noqa: E501
    ("SWAP.reached: total nan", with_group(lambda: swap_helper().reached(1, NAN, 0.5)), ValueError, "total"),  # main: accepted, False  # noqa: E501
    ("SWAP.reached: correct > total", with_group(lambda: swap_helper().reached(3, 2, 0.5)), ValueError, "correct"),  # main: accepted, True  # noqa: E501
    ("SWAP.average: bn_loader int", with_group(lambda: swap_helper().average(3)), TypeError, "bn_loader"),  # noqa: E501
    ("SWAP.independent: body error propagates", with_group(lambda: _raise_inside(swap_helper())), KeyError, "inside"),  # noqa: E501
    # snapshots
    ("Snapshots: model str", lambda: Snapshots("net", 2), TypeError, "model must be"),
    ("Snapshots: max_snapshots str", lambda: Snapshots(nn.Linear(2, 1), "2"), TypeError, "max_snapshots"),  # main: ValueError  # noqa: E501
    ("Snapshots: device bad", lambda: Snapshots(nn.Linear(2, 1), 2, device="gpu0"), ValueError, "device"),  # main: RuntimeError  # noqa: E501
    ("Snapshots: device float", lambda: Snapshots(nn.Linear(2, 1), 2, device=1.5), TypeError, "device"),  # main: torch's zeros() message  # noqa: E501
    ("Snapshots: dtype int", lambda: Snapshots(nn.Linear(2, 1), 2, dtype=torch.int64), ValueError, "dtype"),  # noqa: E501
    ("Snapshots.collect: model str", lambda: snaps().collect("net"), TypeError, "model must be"),
    ("Snapshots.load: model str", lambda: Snapshots.load("missing.safetensors", "net"), TypeError, "model must be"),  # main: FileNotFoundError  # noqa: E501
    ("Snapshots.load: device bad", lambda: Snapshots.load("missing.safetensors", nn.Linear(2, 1), device="gpu0"), ValueError, "device"),  # main: FileNotFoundError  # noqa: E501
    ("Snapshots.save: path int", lambda: snaps().save(3), TypeError, "path must be"),  # main: unnamed TypeError  # noqa: E501
    ("Snapshots.load: path int", lambda: Snapshots.load(3, nn.Linear(2, 1)), TypeError, "path must be"),  # main: unnamed TypeError  # noqa: E501
    ("Snapshots.posterior: none taken", lambda: snaps().posterior(), RuntimeError, "collect"),
    ("Snapshots.swa: none taken", lambda: snaps().swa(), RuntimeError, "collect"),
    ("Snapshots.mean: none taken", lambda: snaps().mean, RuntimeError, "collect"),
    ("multi_swa: None", lambda: multi_swa(None), TypeError, "runs must be"),  # main: 'NoneType' not iterable  # noqa: E501
    ("multi_swa: a model", lambda: multi_swa(nn.Linear(2, 1)), TypeError, "runs must be"),  # main: 'Linear' not iterable  # noqa: E501
    ("multi_swa: empty", lambda: multi_swa([]), ValueError, "runs|at least one run"),
    # optim
    ("SAM: base str", lambda: SAM("sgd"), TypeError, "base must be"),
    ("SAM: rho nan", lambda: SAM(sgd(), rho=NAN), ValueError, "rho"),
    ("SAM.add_param_group: str", lambda: SAM(sgd()).add_param_group("layer"), TypeError, "param_group must be a dict"),  # noqa: E501
    ("SAM.add_param_group: no params", lambda: SAM(sgd()).add_param_group({"lr": 0.1}), ValueError, "param_group must have a 'params'"),  # main: KeyError  # noqa: E501
    ("SAM.add_param_group: rho nan", lambda: SAM(sgd()).add_param_group({"params": nn.Linear(1, 1).parameters(), "rho": NAN}), ValueError, "rho"),  # main: accepted, NaN steps  # noqa: E501
    ("SAM.add_param_group: adaptive str", lambda: SAM(sgd()).add_param_group({"params": nn.Linear(1, 1).parameters(), "adaptive": "yes"}), TypeError, "adaptive"),  # main: accepted  # noqa: E501
    ("SAM.add_param_group: shared parameter", lambda: _add_twice(), ValueError, "param_group cannot be added"),  # noqa: E501
    ("SAM.zero_grad: set_to_none str", lambda: SAM(sgd()).zero_grad("no"), TypeError, "set_to_none"),  # main: accepted as True  # noqa: E501
    ("SAM.load_state_dict: str", lambda: SAM(sgd()).load_state_dict("ckpt.pt"), TypeError, "state_dict must be a dict"),  # main: AttributeError  # noqa: E501
    ("SAM.step: closure str", lambda: SAM(sgd()).step("loss"), TypeError, "closure"),  # main: 'str' not callable  # noqa: E501
    ("SAM.step: no closure", lambda: SAM(sgd()).step(), ValueError, "closure"),
    ("SAM.first_step: no gradient", lambda: SAM(sgd()).first_step(), RuntimeError, "backward"),
    ("SAM.second_step: no first_step", lambda: SAM(sgd()).second_step(), RuntimeError, "first_step"),  # noqa: E501
    ("frozen_bn: model str", lambda: frozen_bn("net").__enter__(), TypeError, "model must be"),  # main: AttributeError  # noqa: E501
    # schedules
    ("CollectEvery: every str", lambda: CollectEvery("2", 1), TypeError, "every"),  # main: ValueError  # noqa: E501
    ("CollectEvery: steps_done negative", lambda: CollectEvery(2, 1)(-1), ValueError, "steps_done"),  # main: accepted  # noqa: E501
    ("SWAGDecay: swa_start float", lambda: SWAGDecay(2.5, 0.1), TypeError, "swa_start"),  # main: ValueError  # noqa: E501
    ("SWAGDecay: k str", lambda: SWAGDecay(10, 0.1)("3"), TypeError, "k must be"),  # main: unnamed TypeError  # noqa: E501
    ("SWAGDecay: k negative", lambda: SWAGDecay(10, 0.1)(-1), ValueError, "k must be"),  # main: accepted  # noqa: E501
    ("SWAGDecay.collect_every: every 0", lambda: SWAGDecay(10, 0.1).collect_every(0), ValueError, "every"),  # noqa: E501
    ("Cyclic: cycle str", lambda: Cyclic("4", 0.1), TypeError, "cycle"),  # main: ValueError
    ("Cyclic: k str", lambda: Cyclic(4, 0.1)("3"), TypeError, "k must be"),  # main: unnamed TypeError  # noqa: E501
    ("Cyclic: k negative", lambda: Cyclic(4, 0.1)(-1), ValueError, "k must be"),  # main: accepted
    ("Cyclic.position: k before start", lambda: Cyclic(4, 0.1, start=3).position(1), ValueError, "k must be"),  # main: accepted  # noqa: E501
    ("Cyclic.collect: nothing to refuse", lambda: Cyclic(4, 0.1).collect("4"), TypeError, "steps_done"),  # noqa: E501
    ("swag_schedule: optimizer", lambda: swag_schedule(nn.Linear(2, 1), swa_start=5, swa_lr=0.01), TypeError, "optimizer"),  # noqa: E501
    ("swag_schedule: swa_start str", lambda: swag_schedule(sgd(), swa_start="5", swa_lr=0.01), TypeError, "swa_start"),  # main: ValueError  # noqa: E501
    ("cyclic_schedule: min_lr nan", lambda: cyclic_schedule(sgd(), cycle=4, min_lr=NAN), ValueError, "min_lr"),  # noqa: E501
    ("cyclic_schedule: cycle float", lambda: cyclic_schedule(sgd(), cycle=4.0, min_lr=0.01), TypeError, "cycle"),  # main: ValueError  # noqa: E501
]  # fmt: skip


def _sparse_step() -> None:
    emb = nn.Embedding(4, 2, sparse=True)
    opt = QuantizedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1))
    emb(torch.tensor([1])).sum().backward()
    opt.step()


def _raise_inside(helper: SWAP) -> None:
    with helper.independent():
        raise KeyError("inside")


def _add_twice() -> None:
    opt = SAM(sgd())
    opt.add_param_group({"params": opt.param_groups[0]["params"]})


@pytest.mark.parametrize(("call", "exc", "match"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_misuse_is_refused_by_name(
    call: Callable[[], object], exc: type[Exception], match: str, request: pytest.FixtureRequest
) -> None:
    if getattr(call, "needs_group", False):
        request.getfixturevalue("group")
    with pytest.raises(exc, match=match):
        call()


PROTOCOL = {"extra_repr", "get_extra_state", "set_extra_state"}  # nn.Module's, called by torch


def _public_names() -> set[str]:
    """Every public function, class and method that takes an argument (``Owner.method``)."""
    names = set()
    for module in MODULES:
        for name in module.__all__:
            obj: Any = getattr(module, name)
            if inspect.isclass(obj):
                names.add(name)
                for attr, value in vars(obj).items():
                    fn = value.__func__ if isinstance(value, classmethod) else value
                    if (attr.startswith("_") and attr != "__call__") or attr in PROTOCOL:
                        continue
                    if inspect.isfunction(fn) and len(inspect.signature(fn).parameters) > 1:
                        names.add(f"{name}.{attr}")
            elif inspect.isfunction(obj):
                names.add(name)
    return names


def test_every_public_name_has_a_row() -> None:
    covered = {r[0].split(":")[0] for r in ROWS}
    missing = {n for n in _public_names() if n.removesuffix(".__call__") not in covered}
    assert not missing, f"add misuse rows for {sorted(missing)}"
