"""swag.schedules: every step of a cycle against the papers' formulas, and the collect steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import SequentialLR
from torch.optim.swa_utils import SWALR

from swag.schedules import CollectEvery, Cyclic, SWAGDecay, cyclic_schedule, swag_schedule
from tests.test_guarantee_misuse_family_args import sgd

# Rates are compared with rel=1e-12: LambdaLR computes base * factor in float64, the references
# below the same formula rearranged, so only a few ulps of rounding separate them.
REL = 1e-12


def swa_cyclic(i: int, c: int, a1: float, a2: float) -> float:
    """SWA paper (Izmailov et al. 2018): α(i) = (1 − t(i))α₁ + t(i)α₂, t(i) = (mod(i−1, c)+1)/c."""
    t = (math.fmod(i - 1, c) + 1) / c
    return (1 - t) * a1 + t * a2


def fge_triangle(i: int, c: int, a1: float, a2: float) -> float:
    """FGE paper (Garipov et al. 2018): down from α₁ to α₂ in the first half, back up after."""
    t = (math.fmod(i - 1, c) + 1) / c
    if t <= 0.5:
        return (1 - 2 * t) * a1 + 2 * t * a2
    return (2 - 2 * t) * a2 + (2 * t - 1) * a1


def cosine_cycle(i: int, c: int, a1: float, a2: float) -> float:
    t = (math.fmod(i - 1, c) + 1) / c
    return a2 + 0.5 * (a1 - a2) * (1 + math.cos(math.pi * t))


def swag_paper(epoch: int, swa_start: int, lr: float, swa_lr: float) -> float:
    """SWAG paper's schedule: t = epoch/swa_start; 1 to 0.5, linear to swa_lr/lr by 0.9."""
    t = epoch / swa_start
    ratio = swa_lr / lr
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    else:
        factor = ratio
    return lr * factor


def two_group_sgd(lrs: tuple[float, float]) -> torch.optim.SGD:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    return torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": lrs[0]},
            {"params": model[1].parameters(), "lr": lrs[1]},
        ],
        momentum=0.9,
    )


def used_rates(
    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, n: int
) -> list[list[float]]:
    """The rates each of ``n`` optimizer steps runs at (read before the step)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


REFERENCES = {"linear": swa_cyclic, "triangle": fge_triangle, "cosine": cosine_cycle}


@pytest.mark.parametrize("shape", ["linear", "triangle", "cosine"])
@pytest.mark.parametrize("start", [0, 5])
def test_cyclic_matches_the_formula_at_every_step(shape: str, start: int) -> None:
    a1, a2, c = (0.1, 0.4), (0.001, 0.02), 6
    opt = two_group_sgd(a1)
    sched = cyclic_schedule(opt, cycle=c, min_lr=list(a2), shape=shape, start=start)  # type: ignore[arg-type]
    rates = used_rates(opt, sched, start + 4 * c)
    ref = REFERENCES[shape]
    for k, per_group in enumerate(rates):
        for g, lr in enumerate(per_group):
            expected = a1[g] if k < start else ref(k - start + 1, c, a1[g], a2[g])
            assert lr == pytest.approx(expected, rel=REL), (shape, k, g)


@pytest.mark.parametrize("shape", ["linear", "triangle", "cosine"])
def test_collect_steps_are_the_alpha2_steps_once_per_cycle(shape: str) -> None:
    a1, a2, c, start = 0.1, 0.005, 8, 3
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=a1)
    sched = cyclic_schedule(opt, cycle=c, min_lr=a2, shape=shape, start=start)  # type: ignore[arg-type]
    when = sched.lr_lambdas[0].collect  # type: ignore[attr-defined]
    collected = []
    for k in range(start + 5 * c):
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        if when(k + 1):
            collected.append((k + 1, lr))
    assert len(collected) == 5
    assert all(lr == pytest.approx(a2, rel=REL) for _, lr in collected)
    # and no other step ran at α₂ (the minimum of the cycle)
    mid = c // 2 if shape == "triangle" else c
    assert [s for s, _ in collected] == [start + mid + j * c for j in range(5)]


def test_swag_schedule_matches_the_paper_at_every_step() -> None:
    lrs, swa_lrs, swa_start = (0.05, 0.2), (0.01, 0.05), 40
    opt = two_group_sgd(lrs)
    sched = swag_schedule(opt, swa_start=swa_start, swa_lr=list(swa_lrs))
    rates = used_rates(opt, sched, swa_start + 20)
    for k, per_group in enumerate(rates):
        for g, lr in enumerate(per_group):
            assert lr == pytest.approx(swag_paper(k, swa_start, lrs[g], swa_lrs[g]), rel=REL)
    when = sched.lr_lambdas[0].collect_every(5)  # type: ignore[attr-defined]
    assert [s for s in range(1, swa_start + 21) if when(s)] == [45, 50, 55, 60]


def test_sgd_baseline_is_the_decay_to_one_percent() -> None:
    f = SWAGDecay(swa_start=100, final=0.01)
    assert [f(k) for k in (0, 50, 70, 90, 99, 100, 1000)] == pytest.approx(
        [1.0, 1.0, 0.505, 0.01, 0.01, 0.01, 0.01], rel=REL
    )


def test_works_with_adam_and_survives_a_state_dict_round_trip() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = cyclic_schedule(opt, cycle=5, min_lr=1e-4, shape="cosine")
    used_rates(opt, sched, 7)
    state = sched.state_dict()
    ahead = used_rates(opt, sched, 6)

    opt2 = torch.optim.Adam(nn.Linear(3, 1).parameters(), lr=1e-2)
    sched2 = cyclic_schedule(opt2, cycle=5, min_lr=1e-4, shape="cosine")
    sched2.load_state_dict(state)
    for g in opt2.param_groups:
        g["lr"] = sched2.get_last_lr()[0]
    assert used_rates(opt2, sched2, 6) == ahead
    assert sched2.lr_lambdas[0] == Cyclic(5, 1e-2, "cosine")


def test_hands_over_to_swalr() -> None:
    """Decay with swag_schedule, then let torch's SWALR anneal to its own swa_lr."""
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    sched = swag_schedule(opt, swa_start=20, swa_lr=0.02)
    used_rates(opt, sched, 20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02, rel=REL)
    swa = SWALR(opt, swa_lr=0.05, anneal_epochs=4, anneal_strategy="linear")
    rates = [r[0] for r in used_rates(opt, swa, 8)]
    # SWALR starts from where our schedule left the rate and ends at its swa_lr
    assert 0.02 <= rates[0] <= 0.05
    assert rates[-4:] == pytest.approx([0.05] * 4, rel=REL)
    assert rates == sorted(rates)


def test_collect_every() -> None:
    when = CollectEvery(every=4, first=6)
    assert [s for s in range(30) if when(s)] == [6, 10, 14, 18, 22, 26]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Cyclic(0, 0.1), "cycle must be an int >= 1"),
        (lambda: Cyclic(5, 0.1, "triangle"), "even length"),
        (lambda: Cyclic(4, -0.1), "low"),
        (lambda: Cyclic(4, 0.1, "square"), "shape must be one of"),  # type: ignore[arg-type]
        (lambda: Cyclic(4, 0.1, start=-1), "start must be an int >= 0"),
        (lambda: SWAGDecay(0, 0.1), "swa_start"),
        (lambda: SWAGDecay(10, 0.1, decay_start=0.9, decay_end=0.5), "decay_start < decay_end"),
        (lambda: CollectEvery(0, 1), "every must be"),
    ],
)
def test_bad_settings_are_named(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]


def test_factories_check_per_group_values() -> None:
    opt = two_group_sgd((0.1, 0.1))
    with pytest.raises(ValueError, match="min_lr has 3 values for 2 parameter groups"):
        cyclic_schedule(opt, cycle=4, min_lr=[0.01, 0.01, 0.01])
    with pytest.raises(ValueError, match="swa_lr must be finite and >= 0"):
        swag_schedule(opt, swa_start=4, swa_lr=-0.1)


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
