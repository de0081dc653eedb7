"""swag.snapshots: FGE snapshots are the weights at cycle ends; FGE, MultiSWA and SWA on any
trajectory (cyclical, SAM) go through Collector, predict, save/load and the metrics unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import swag
from swag.optim import SAM
from swag.schedules import cyclic_schedule, swag_schedule
from swag.snapshots import Snapshots, multi_swa
from tests.test_guarantee_misuse_family_args import NAN, taken


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def problem(seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, x, y


def cyclical_run(
    seed: int, cycles: int, *, sam: bool = False
) -> tuple[nn.Module, Snapshots, swag.Collector, list[Tensor]]:
    """Train with a linear cyclical schedule (optionally under SAM); collect at cycle ends into
    Snapshots and a Collector, and record the weights there independently."""
    model, x, y = problem(seed)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt: torch.optim.Optimizer = SAM(base, rho=0.05) if sam else base
    sched = cyclic_schedule(opt, cycle=5, min_lr=0.005, start=10)
    when = sched.lr_lambdas[0].collect  # type: ignore[attr-defined]
    snaps = Snapshots(model, max_snapshots=cycles)
    collector = swag.Collector(model, max_rank=cycles)
    recorded = []
    g = torch.Generator().manual_seed(seed)
    for step in range(1, 10 + 5 * cycles + 1):
        idx = torch.randperm(len(x), generator=g)[:16]

        def closure(idx: Tensor = idx) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        if sam:
            opt.step(closure)
        else:
            closure()
            opt.step()
        sched.step()
        if when(step):
            snaps.collect()
            collector.collect()
            recorded.append(flat(model).clone())
    return model, snaps, collector, recorded


def test_fge_snapshots_are_exactly_the_weights_at_cycle_ends() -> None:
    _, snaps, _, recorded = cyclical_run(0, cycles=4)
    assert snaps.n == 4 and len(recorded) == 4
    for row, theta in zip(snaps.snapshots, recorded, strict=True):
        assert torch.equal(row, theta)
    fge = snaps.posterior()
    assert len(fge) == 4
    for member, theta in zip(fge.components, recorded, strict=True):
        assert torch.equal(member.mean, theta)
    # they are distinct points: the cycles move the weights
    assert min((a - b).norm() for a, b in itertools.pairwise(recorded)) > 1e-3


@pytest.mark.parametrize("sam", [False, True])
def test_collector_on_a_cyclical_or_sam_run_needs_no_special_case(sam: bool) -> None:
    """SWA of the cycle-end snapshots equals the Collector's mean; its variance the snapshots'."""
    _, snaps, collector, recorded = cyclical_run(1, cycles=5, sam=sam)
    stacked = torch.stack(recorded).double()
    # float32 statistics against a float64 reference: a few ulps of |θ| ≈ 1
    torch.testing.assert_close(collector.mean.double(), stacked.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(snaps.mean.double(), stacked.mean(0), rtol=0, atol=1e-6)
    post = collector.posterior()
    var = stacked.var(0, unbiased=False)
    torch.testing.assert_close(post.std.double() ** 2, var, rtol=1e-4, atol=1e-10)


def test_fge_predicts_the_average_of_its_members(tmp_path: Path) -> None:
    model, snaps, _, recorded = cyclical_run(2, cycles=3)
    _, x, y = problem(2)
    fge = snaps.posterior()
    probs = swag.predict(fge, model, [x])  # one pass per member by default
    work = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    expected = torch.zeros(len(x), 3, dtype=torch.float64)
    for theta in recorded:
        torch.nn.utils.vector_to_parameters(theta, work.parameters())
        expected += work(x).softmax(-1).double().detach() / len(recorded)
    torch.testing.assert_close(probs.double(), expected, rtol=0, atol=1e-6)

    fge.save(tmp_path / "fge.safetensors")
    loaded = swag.MultiSWAG.load(tmp_path / "fge.safetensors")
    assert torch.equal(swag.predict(loaded, model, [x]), probs)
    summary = swag.metrics.summary(probs, y)
    assert 0 <= summary["ece"] <= 1 and summary["nll"] > 0

    swa = snaps.swa()
    assert swag.predict(swa, model, [x]).shape == (len(x), 3)


def test_multi_swa_mixes_the_means_of_independent_runs() -> None:
    runs = [cyclical_run(seed, cycles=3)[2] for seed in (3, 4)]
    mix = multi_swa(runs)
    assert len(mix) == 2
    for member, collector in zip(mix.components, runs, strict=True):
        assert isinstance(member, swag.PointPosterior)
        assert torch.equal(member.mean, collector.mean)
    # Snapshots and posteriors are runs too
    _, snaps, collector, _ = cyclical_run(5, cycles=2)
    mixed = multi_swa([snaps, collector.posterior()])
    torch.testing.assert_close(mixed.components[0].mean, snaps.mean)
    torch.testing.assert_close(mixed.components[1].mean, collector.mean)


def test_snapshots_state_dict_round_trip_and_errors() -> None:
    model, _, _ = problem(0)
    snaps = Snapshots(model, max_snapshots=2)
    snaps.collect()
    fresh = Snapshots(model, max_snapshots=2)
    fresh.load_state_dict(snaps.state_dict())
    assert fresh.n == 1 and torch.equal(fresh.snapshots, snaps.snapshots)
    snaps.collect()
    with pytest.raises(RuntimeError, match="all 2 snapshots are taken"):
        snaps.collect()
    with pytest.raises(ValueError, match="max_snapshots must be an int >= 1"):
        Snapshots(model, max_snapshots=0)
    with pytest.raises(RuntimeError, match="no snapshot taken yet"):
        Snapshots(model, max_snapshots=1).posterior()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    empty = Snapshots(model, max_snapshots=1)
    with pytest.raises(ValueError, match=r"NaN or inf in \['0.weight'\]"):
        empty.collect()
    assert empty.n == 0
    with pytest.raises(ValueError, match="at least one run"):
        multi_swa([])


def test_swag_schedule_drives_a_collector_run() -> None:
    """The SWAG paper's loop: decay, then collect every few steps at the constant rate."""
    model, x, y = problem(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = swag_schedule(opt, swa_start=20, swa_lr=0.02)
    when = sched.lr_lambdas[0].collect_every(3)  # type: ignore[attr-defined]
    collector = swag.Collector(model, max_rank=5)
    rates = []
    for step in range(1, 36):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if when(step):
            collector.collect()
    assert collector.n == 5  # steps 23, 26, 29, 32, 35
    assert rates[20:] == pytest.approx([0.02] * 15)


def test_fge_of_a_batchnorm_model_refreshes_each_member() -> None:
    """Snapshots hold parameters only; predict recomputes each member's BN statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    _, x, _ = problem(7)
    snaps = Snapshots(model, max_snapshots=2)
    thetas = []
    for shift in (0.0, 0.5):
        with torch.no_grad():
            model[0].bias.add_(shift)
        snaps.collect()
        thetas.append(flat(model).clone())
    probs = swag.predict(
        snaps.posterior(), model, [x], options=swag.PredictOptions(bn=swag.BNRefresh([x]))
    )
    expected = torch.zeros(len(x), 3)
    for theta in thetas:
        work = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        torch.nn.utils.vector_to_parameters(theta, work.parameters())
        work.train()
        with torch.no_grad():
            work[1].momentum = None  # cumulative average over the one batch: its statistics
            work(x)
        work.eval()
        expected += work(x).softmax(-1).detach() / 2
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)


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
