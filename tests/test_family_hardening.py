"""Hostile review of swag.schedules, swag.snapshots and swag.optim (issue 13).

Misuse of every public argument gets a TypeError/ValueError naming it; then models and loops the
first tests did not try: closures that do not zero gradients, manual two-pass steps under a
scheduler, sparse gradients, bf16 / channels_last BatchNorm / tied / compiled models, checkpoints
resumed mid-run, damaged snapshot states, and torch's own schedulers composed with ours.

Controls (passed before the review's fixes, kept as guards): the zero-rate bit-exactness cases
(bf16, channels_last BatchNorm, tied, compiled), compiled-model snapshots, mid-run resume, the
SWALR/SequentialLR composition, the scheduler on the base optimizer, and the misuse cases
every=0, cycle 0, shape and collect from another layout. Every other test failed before them.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, SequentialLR
from torch.optim.swa_utils import SWALR

import swag
from swag.optim import SAM, frozen_bn
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


def test_base_without_parameters_is_named() -> None:
    base = sgd()
    base.param_groups.clear()
    with pytest.raises(ValueError, match="base has no parameters"):
        SAM(base)


def problem() -> tuple[nn.Module, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Linear(3, 1), x, y


def sam_steps(opt: SAM, model: nn.Module, x: Tensor, y: Tensor, n: int, zero: bool = True) -> None:
    for _ in range(n):

        def closure() -> Tensor:
            if zero:
                opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def test_closure_need_not_zero_gradients() -> None:
    """Before: last step's g' was added into g when the closure did not zero (as documented)."""
    runs = []
    for zero in (True, False):
        model, x, y = problem()
        sam_steps(SAM(sgd(model, momentum=0.9), rho=0.1), model, x, y, 3, zero=zero)
        runs.append(model.weight.detach().clone())
    assert torch.equal(*runs)


def test_first_step_twice_is_refused_and_theta_kept() -> None:
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.1)
    theta = model.weight.detach().clone()
    nn.functional.mse_loss(model(x), y).backward()
    opt.first_step()
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"first_step\(\) called twice"):
        opt.first_step()
    opt.base.param_groups[0]["lr"] = 0.0  # a descent of zero: second_step must give θ back
    opt.second_step()
    assert torch.equal(model.weight, theta)


def test_an_error_in_the_second_pass_leaves_theta() -> None:
    """Before: an exception (or Ctrl-C) in the second closure left the weights at θ + ε̂, and
    the next step refused to start; now θ is back and training can go on."""
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.5)
    theta = model.weight.detach().clone()
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert torch.equal(model.weight, theta)
    sam_steps(opt, model, x, y, 1)
    assert not torch.equal(model.weight, theta)


@pytest.mark.parametrize("on", ["sam", "base"])
def test_scheduler_on_wrapper_or_base_with_manual_steps(on: str) -> None:
    """LambdaLR(sam) with first_step/second_step warned 'scheduler before optimizer' (an error
    under our filterwarnings); either attachment must give the same rates."""
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.1)
    sched = cyclic_schedule(opt if on == "sam" else opt.base, cycle=4, min_lr=0.01)
    rates = []
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.first_step()
        nn.functional.mse_loss(model(x), y).backward()
        opt.second_step()
        sched.step()
        rates.append(opt.base.param_groups[0]["lr"])
    expected = [0.1 * Cyclic(4, 0.1)(k) for k in range(1, 6)]
    assert rates == pytest.approx(expected, rel=1e-12)  # float products of the same factors


def test_groups_added_or_loaded_after_wrapping_work() -> None:
    """Before: KeyError 'adaptive' for a group added to base, or a plain optimizer's state."""
    model, x, y = problem()
    extra = nn.Linear(3, 1)
    opt = SAM(sgd(model), rho=0.1)
    opt.base.add_param_group({"params": extra.parameters()})
    sam_steps(opt, model, x, y, 1)
    assert opt.param_groups[1]["rho"] == 0.1
    # resume SAM from a plain SGD's checkpoint: the same as that SGD continued under SAM
    plain_model, _, _ = problem()
    plain = sgd(plain_model, momentum=0.9)
    nn.functional.mse_loss(plain_model(x), y).backward()
    plain.step()
    other = copy.deepcopy(plain_model)
    resumed = SAM(sgd(other, momentum=0.9), rho=0.1)
    resumed.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file: no sharing
    sam_steps(SAM(plain, rho=0.1), plain_model, x, y, 2)
    sam_steps(resumed, other, x, y, 2)
    assert torch.equal(plain_model.weight, other.weight)


def test_sparse_gradients_match_dense() -> None:
    """Before: NotImplementedError from the norm. Sparse and dense embeddings take the same
    SAM/ASAM steps; the sums differ only in order (float32, 1e-6 relative)."""
    idx = torch.tensor([1, 2, 2, 7])
    for adaptive in (False, True):
        weights = []
        for sparse in (True, False):
            torch.manual_seed(0)
            emb = nn.Embedding(10, 3, sparse=sparse)
            opt = SAM(torch.optim.SGD(emb.parameters(), lr=0.1), rho=0.2, adaptive=adaptive)
            for _ in range(2):
                opt.step(lambda e=emb: e(idx).pow(2).sum().backward())
            weights.append(emb.weight.detach())
        torch.testing.assert_close(*weights, rtol=1e-6, atol=1e-7)


def test_frozen_bn_covers_instance_norm_running_stats() -> None:
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.InstanceNorm2d(2, track_running_stats=True))
    before = copy.deepcopy(net.state_dict())
    with frozen_bn(net):
        net(torch.randn(2, 2, 4, 4))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, i: Tensor) -> Tensor:
        return self.out(self.emb(i))


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)
    )


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "bf16": (lambda: nn.Linear(4, 3).to(torch.bfloat16), lambda: torch.randn(8, 4).bfloat16()),
    "channels_last_bn": (
        lambda: conv_bn().to(memory_format=torch.channels_last),
        lambda: torch.randn(4, 3, 6, 6).to(memory_format=torch.channels_last),
    ),
    "tied": (Tied, lambda: torch.tensor([0, 1, 2, 5])),
    "compiled": (
        lambda: torch.compile(nn.Linear(4, 3), backend="eager"),
        lambda: torch.randn(8, 4),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_sam_with_zero_rate_gives_theta_back_bit_exactly(case: str) -> None:
    """With lr 0 the descent is a no-op, so after a full SAM step every parameter must be θ
    to the bit (restored, not θ + ε̂ − ε̂), and BatchNorm statistics those of one forward at θ."""
    make, data = CASES[case]
    torch.manual_seed(0)
    model, x = make(), data()
    ref = copy.deepcopy(model)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9), rho=0.5, model=model)
    opt.step(lambda: model(x).float().pow(2).mean().backward())
    ref(x)  # one training forward at θ: the statistics SAM must leave behind
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if case == "tied":
        assert model.out.weight is model.emb.weight


def test_theta_copy_follows_a_cast_model() -> None:
    """Before: θ's copy kept the float32 of the first step, so after model.double() the
    restore rounded θ to float32."""
    model, x, y = problem()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)
    sam_steps(opt, model, x, y, 1)
    model.double()
    with torch.no_grad():
        model.weight.add_(1e-12)  # not representable next to these values in float32
    theta = model.weight.detach().clone()
    sam_steps(opt, model, x.double(), y.double(), 1)
    assert torch.equal(model.weight, theta)


def test_snapshots_of_a_compiled_model_apply_to_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    snaps = Snapshots(torch.compile(plain, backend="eager"), max_snapshots=1)
    snaps.collect()
    assert snaps.layout.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    snaps.swa().apply_(fresh)
    assert all(
        torch.equal(a, b) for a, b in zip(plain.parameters(), fresh.parameters(), strict=True)
    )


def test_resume_mid_run_is_bit_identical() -> None:
    """SAM (momentum) + cyclic schedule on the wrapper + Snapshots: 3 steps, checkpoint through
    bytes, 3 more, equals 6 straight."""

    def build(model: nn.Module) -> tuple[SAM, LambdaLR, Snapshots]:
        opt = SAM(sgd(model, momentum=0.9, weight_decay=1e-3), rho=0.1)
        return opt, cyclic_schedule(opt, cycle=2, min_lr=0.01, start=1), Snapshots(model, 4)

    def steps(model: nn.Module, parts: tuple[SAM, LambdaLR, Snapshots], ks: range) -> None:
        opt, sched, snaps = parts
        when = sched.lr_lambdas[0].collect
        for k in ks:
            sam_steps(opt, model, x, y, 1)
            sched.step()
            if when(k):
                snaps.collect()

    straight, x, y = problem()
    parts = build(straight)
    steps(straight, parts, range(1, 7))
    first, _, _ = problem()
    one = build(first)
    steps(first, one, range(1, 4))
    buf = io.BytesIO()
    torch.save(
        {"m": first.state_dict(), **{str(i): p.state_dict() for i, p in enumerate(one)}}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    second = nn.Linear(3, 1)
    second.load_state_dict(saved["m"])
    two = build(second)
    for i, part in enumerate(two):
        part.load_state_dict(saved[str(i)])
    steps(second, two, range(4, 7))
    assert torch.equal(straight.weight, second.weight)
    assert two[1].get_last_lr() == parts[1].get_last_lr()
    assert two[2].n == parts[2].n == 2 and torch.equal(two[2].snapshots, parts[2].snapshots)


def test_damaged_snapshot_states_change_nothing() -> None:
    snaps = taken(1)
    good = snaps.state_dict()
    layout = good["_extra_state"]["layout"]
    nan_rows = good["snapshots"].clone()
    nan_rows[0, 0] = NAN
    other = nn.Sequential()
    other.add_module("w", nn.Linear(2, 1))  # same P, other names: once half-loaded
    damaged = {
        "n too large": {**good, "_extra_state": {"n": 5, "layout": layout}},
        "n negative": {**good, "_extra_state": {"n": -1, "layout": layout}},
        "garbage extra": {**good, "_extra_state": "garbage"},
        "NaN row": {**good, "snapshots": nan_rows},
        "other layout": Snapshots(other, 2).state_dict(),
    }
    for label, state in damaged.items():
        target = taken(0)
        before = target.snapshots.clone()
        with pytest.raises(RuntimeError, match=r"cannot load snapshots.*nothing was loaded"):
            target.load_state_dict(state)
        assert target.n == 0 and torch.equal(target.snapshots, before), label
    shared = taken(0)
    shared.load_state_dict(good, assign=True)  # copied, never shared with the source
    shared.collect()
    assert torch.equal(snaps.snapshots, good["snapshots"]) and shared.n == 2


def test_schedules_compose_with_swalr_and_sequentiallr() -> None:
    """SequentialLR(cyclic_schedule, SWALR): the cyclic formula for 8 steps, then SWALR's
    annealing to swa_lr; and swag_schedule handing over to SWALR keeps its constant rate."""
    opt = sgd()
    cyc = cyclic_schedule(opt, cycle=4, min_lr=0.01)
    swa = SWALR(opt, swa_lr=0.05, anneal_epochs=2, anneal_strategy="linear")
    seq = SequentialLR(opt, [cyc, swa], milestones=[8])
    rates = []
    for _ in range(12):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        seq.step()
    cyclic = [0.1 * Cyclic(4, 0.1)(k) for k in range(8)]
    # SWALR from the last rate 0.01: step 0 keeps it, then linear to 0.05 over 2 steps
    assert rates == pytest.approx([*cyclic, 0.01, 0.03, 0.05, 0.05], rel=1e-9)
    opt = sgd()
    decay = swag_schedule(opt, swa_start=10, swa_lr=0.02)
    handover = SWALR(opt, swa_lr=0.02, anneal_epochs=1)
    rates = []
    for k in range(15):
        opt.step()
        (decay if k < 10 else handover).step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[:9] == pytest.approx([0.1 * SWAGDecay(10, 0.2)(k) for k in range(1, 10)])
    assert rates[9:] == pytest.approx([0.02] * 6)


def test_snapshots_file_round_trip_and_damaged_files(tmp_path: Path) -> None:
    """Before: no file format at all (only a pickled state_dict). Resumed from the file, the
    run's next snapshot lands in the same buffer bit for bit; a damaged file is named."""
    model = nn.Linear(2, 1)
    snaps = Snapshots(model, max_snapshots=3)
    snaps.collect()
    snaps.save(tmp_path / "s.safetensors")
    resumed = Snapshots.load(tmp_path / "s.safetensors", model)
    with torch.no_grad():
        model.weight.add_(0.5)
    snaps.collect()
    resumed.collect()
    assert resumed.n == 2 and torch.equal(resumed.snapshots, snaps.snapshots)
    blob = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a readable swag file"):
        Snapshots.load(tmp_path / "cut.safetensors", model)
    with pytest.raises(ValueError, match="parameter layout differs"):
        Snapshots.load(tmp_path / "s.safetensors", nn.Linear(3, 1))
    bad = taken(1)
    bad.snapshots[0, 0] = NAN
    bad.save(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=r"tensor 'snapshots' has non-finite entries"):
        Snapshots.load(tmp_path / "nan.safetensors", nn.Linear(2, 1))
    swag.Collector(model, max_rank=2).save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="not a 'snapshots'"):
        Snapshots.load(tmp_path / "c.safetensors", model)
