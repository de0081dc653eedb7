"""FGE vs SWA on one cyclical run, and SAM's effect on calibration and OOD (Fashion-MNIST).

Two studies on a Fashion-MNIST subset with an MLP, every method from the same initialisation
per seed, with the public API only (``swag.schedules``, ``swag.snapshots``, ``swag.optim``):

- ``fge``: the SWA paper's claim that SWA of a cyclical run matches the accuracy of the FGE
  ensemble of the same run's cycle-end snapshots, at one model's test cost. SGD (the SWAG
  paper's decay to lr/100) is the baseline with the same training budget.
- ``sam``: SGD vs SAM (same schedule), and SWAG on an SGD trajectory vs on a SAM trajectory:
  test accuracy, NLL, ECE and OOD AUROC (Fashion-MNIST vs MNIST, by predictive entropy).

Usage::

    .venv/bin/python experiments/fge_swa.py --study fge --seeds 0 1 2 --out runs/fge
    .venv/bin/python experiments/fge_swa.py --study sam --seeds 0 1 2 --out runs/sam
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import _common
import torch
from torch import Tensor, nn

import swag
from swag.data import load_mnist_subset
from swag.optim import SAM
from swag.schedules import SWAGDecay, cyclic_schedule, swag_schedule
from swag.snapshots import Snapshots

METRICS = ("accuracy", "nll", "ece", "auroc")
FGE_METHODS = ("SGD", "FGE", "SWA", "last snapshot")
SAM_METHODS = ("SGD", "SAM", "SWA (SGD)", "SWA (SAM)", "SWAG (SGD)", "SWAG (SAM)")
# the paired differences each table reports, (method, reference), besides "method − SGD"
ACC_TOL = 0.005  # "as accurate as": half a point of test accuracy
CONTRASTS = {
    "fge": (("SWA", "FGE"),),
    "sam": (("SWA (SAM)", "SWA (SGD)"), ("SWAG (SAM)", "SWAG (SGD)"), ("SWAG (SAM)", "SAM")),
}


@dataclass(frozen=True)
class Config:
    """Data size, training budget (epochs per run) and the methods' settings."""

    train_size: int = 10000
    test_size: int = 10000
    ood_size: int = 5000
    hidden: int = 256
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cycle_start: int = 10  # fge: epochs at lr before the first cycle
    cycle_epochs: int = 2  # fge: cycle length c
    min_lr: float = 0.0005  # fge: α₂ (α₁ = lr)
    rho: float = 0.05  # sam: neighbourhood radius (the SAM paper's default)
    swa_epochs: int = 5  # sam: constant-rate epochs at the end of a SWAG run
    swa_lr: float = 0.01
    collects_per_epoch: int = 4
    max_rank: int = 20
    scale: float = 0.5
    num_samples: int = 30


@dataclass(frozen=True)
class Data(_common.Images):
    """The Fashion-MNIST splits, and MNIST images ``(N, 1, 28, 28)`` as OOD data."""

    x_ood: Tensor


def load(cfg: Config, seed: int) -> Data:
    """A seeded subset of Fashion-MNIST (train), its test split, and MNIST as OOD data."""
    images = _common.fashion_mnist(cfg.train_size, cfg.test_size, seed=seed)
    x_ood, _ = load_mnist_subset(seed=seed)
    return Data(**vars(images), x_ood=x_ood[: cfg.ood_size])


def mlp(cfg: Config, seed: int) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        h = cfg.hidden
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10)
        )


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    data: Data,
    cfg: Config,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """``cfg.epochs`` epochs (SGD and SAM alike); ``on_step(steps_done)`` after each step and
    the scheduler's (where collecting happens)."""

    def after_step(step: int) -> None:
        sched.step()
        if on_step is not None:
            on_step(step)

    g = torch.Generator().manual_seed(seed)
    _common.train(model, opt, data.x, data.y, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  generator=g, after_step=after_step)  # fmt: skip


def sgd(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def steps_per_epoch(cfg: Config) -> int:
    return -(-cfg.train_size // cfg.batch_size)


def score(
    posterior: swag.Posterior, model: nn.Module, data: Data, seed: int, num_samples: int | None
) -> dict[str, float]:
    """Test metrics, OOD AUROC by predictive entropy, and the evaluation's cost."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    probs = swag.predict(posterior, model, [data.test_x], num_samples=num_samples, generator=g)
    seconds = time.perf_counter() - start
    ood = swag.predict(posterior, model, [data.x_ood], num_samples=num_samples, generator=g)
    m = swag.metrics
    out = {k: m.summary(probs, data.test_y)[k] for k in ("accuracy", "nll", "ece")}
    out["auroc"] = m.auroc(
        scores_in=m.predictive_entropy(probs), scores_out=m.predictive_entropy(ood)
    )
    out["test_seconds"] = seconds
    return out


def run_sgd(cfg: Config, data: Data, seed: int) -> nn.Module:
    """The SWAG paper's SGD baseline: lr, decaying to lr/100 between 50% and 90% of the run."""
    model = mlp(cfg, seed)
    opt = sgd(model, cfg)
    total = cfg.epochs * steps_per_epoch(cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, SWAGDecay(total, 0.01))
    train(model, opt, sched, data, cfg, seed)
    return model


def fge_study(cfg: Config, data: Data, seed: int) -> dict[str, dict[str, float]]:
    """One cyclical run: its cycle-end snapshots as an ensemble (FGE) and averaged (SWA)."""
    baseline = run_sgd(cfg, data, seed)
    model = mlp(cfg, seed)
    opt = sgd(model, cfg)
    spe = steps_per_epoch(cfg)
    sched = cyclic_schedule(
        opt, cycle=cfg.cycle_epochs * spe, min_lr=cfg.min_lr, start=cfg.cycle_start * spe
    )
    when = sched.lr_lambdas[0].collect  # type: ignore[attr-defined]
    cycles = (cfg.epochs - cfg.cycle_start) // cfg.cycle_epochs
    snaps = Snapshots(model, max_snapshots=cycles)
    train(model, opt, sched, data, cfg, seed, lambda s: snaps.collect() if when(s) else None)
    last = swag.PointPosterior.from_model(model)  # == the last snapshot when cycles fit exactly
    return {
        "SGD": score(swag.PointPosterior.from_model(baseline), baseline, data, seed, None),
        "FGE": score(snaps.posterior(), model, data, seed, None),
        "SWA": score(snaps.swa(), model, data, seed, None),
        "last snapshot": score(last, model, data, seed, None),
    }


def swag_run(cfg: Config, data: Data, seed: int, sam: bool) -> tuple[nn.Module, swag.Collector]:
    """SWAG's schedule (decay to swa_lr, then constant for swa_epochs, collecting)."""
    model = mlp(cfg, seed)
    base = sgd(model, cfg)
    opt: torch.optim.Optimizer = SAM(base, rho=cfg.rho, model=model) if sam else base
    spe = steps_per_epoch(cfg)
    sched = swag_schedule(opt, swa_start=(cfg.epochs - cfg.swa_epochs) * spe, swa_lr=cfg.swa_lr)
    when = sched.lr_lambdas[0].collect_every(spe // cfg.collects_per_epoch)  # type: ignore[attr-defined]
    collector = swag.Collector(model, max_rank=cfg.max_rank)
    train(model, opt, sched, data, cfg, seed, lambda s: collector.collect() if when(s) else None)
    return model, collector


def sam_study(cfg: Config, data: Data, seed: int) -> dict[str, dict[str, float]]:
    """SGD vs SAM on the same schedule, and SWAG on each trajectory."""
    baseline = run_sgd(cfg, data, seed)
    model = mlp(cfg, seed)
    base = sgd(model, cfg)
    opt = SAM(base, rho=cfg.rho, model=model)
    total = cfg.epochs * steps_per_epoch(cfg)
    train(
        model, opt, torch.optim.lr_scheduler.LambdaLR(opt, SWAGDecay(total, 0.01)), data, cfg, seed
    )
    out = {
        "SGD": score(swag.PointPosterior.from_model(baseline), baseline, data, seed, None),
        "SAM": score(swag.PointPosterior.from_model(model), model, data, seed, None),
    }
    for name, sam in (("SGD", False), ("SAM", True)):
        net, collector = swag_run(cfg, data, seed, sam)
        post = collector.posterior()
        out[f"SWA ({name})"] = score(
            swag.PointPosterior(post.mean, post.layout), net, data, seed, None
        )
        out[f"SWAG ({name})"] = score(post, net, data, seed, cfg.num_samples)
    return out


def claims(results: dict[str, list[dict[str, dict[str, float]]]]) -> list[_common.Claim]:
    """The FGE study's claim (SWA as accurate as FGE) and the SAM study's (SAM more accurate
    than SGD), per seed, for the studies that ran."""
    tests: dict[str, tuple[str, tuple[str, str], Callable[[float], bool]]] = {
        "fge": (f"SWA of a cyclical run is as accurate as the FGE ensemble of its snapshots "
                f"(within {ACC_TOL})", ("SWA", "FGE"), lambda d: abs(d) <= ACC_TOL),
        "sam": ("SAM is more accurate than SGD on the same schedule", ("SAM", "SGD"),
                lambda d: d > 0),
    }  # fmt: skip
    return [_common.paired_claim(tests[s][0], runs, tests[s][1], "accuracy", tests[s][2])
            for s, runs in results.items()]  # fmt: skip


def table(
    results: list[dict[str, dict[str, float]]],
    methods: tuple[str, ...],
    contrasts: tuple[tuple[str, str], ...] = (),
) -> str:
    """Markdown: mean ± std over seeds, then paired differences (per seed, then mean ± std):
    each method minus the first, and each ``(method, reference)`` of ``contrasts``."""
    cols = (*METRICS, "test_seconds")
    pairs = [(m, methods[0]) for m in methods[1:]] + list(contrasts)
    return (
        _common.table(["method", *cols], _common.seed_rows(results, methods, cols))
        + "\n"
        + _common.table(
            ["paired difference", *METRICS], _common.paired_rows(results, pairs, METRICS)
        )
    )


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, dict[str, float]]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["fge", "sam", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for the smoke test")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = Config()
    if args.quick:
        cfg = Config(
            train_size=512, test_size=256, ood_size=256, hidden=32, epochs=4, cycle_start=2,
            cycle_epochs=1, swa_epochs=1, collects_per_epoch=2, max_rank=2, num_samples=2,
        )  # fmt: skip
    studies = {"fge": (fge_study, FGE_METHODS), "sam": (sam_study, SAM_METHODS)}
    chosen = list(studies) if args.study == "both" else [args.study]
    results: dict[str, list[dict[str, dict[str, float]]]] = {}
    text = ""
    for name in chosen:
        study, methods = studies[name]
        results[name] = [study(cfg, load(cfg, seed), seed) for seed in args.seeds]
        text += f"## {name}\n\n" + table(results[name], methods, CONTRASTS[name]) + "\n"
    print(text)
    if args.out:
        numbers = {"results": results}
        doc = _common.Results("fge_swa", claims(results), numbers, asdict(cfg), args.seeds)
        _common.write(args.out, doc, text)
    return results


if __name__ == "__main__":
    main()
