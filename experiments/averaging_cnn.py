"""Weight averaging for the benchmark's CNN on Fashion-MNIST: SGD, SWA, EMA, LAWA, post-hoc EMA.

Claims tested (SWA: Izmailov et al. 2018 and the PyTorch SWA blog post):

1. EMA performs about the same as SWA (|Δ test NLL| ≤ 0.01 nats and |Δ accuracy| ≤ 0.5
   points, per seed), with EMA on the same (SWA-schedule) trajectory and on the SGD run;
2. an equal average with the modified learning-rate schedule (SWA) is best: the lowest test NLL
   and the highest test accuracy of every method, per seed.

Per seed, two training runs of ``swag.bench.small_cnn`` in ``swag bench``'s default regime
(SGD + momentum, weight decay 5·10⁻⁴, 30 epochs on 10,000 training images):

- the SGD run: the SWAG paper's SGD schedule (``lr`` to ``lr / 100``); its last iterate, EMAs of
  every step (decays ``DECAYS``), LAWA over epoch-end checkpoints (windows ``WINDOWS``), post-hoc
  EMA (:class:`swag.PostHocEMA`, σ_rel ``SIGMA_RELS``) and, for contrast, the equal average of the
  iterates SWA would collect (same steps, this schedule);
- the SWA run: ``lr`` decaying to ``swa_lr`` over the first ``epochs - swa_epochs`` epochs, then
  constant, the equal average of ``collects_per_epoch`` iterates per epoch of the constant phase
  (SWA), and EMAs of every step.

The decay, window and σ_rel are chosen by NLL on a validation split carved from the training
images (never the test set). Every averaged model gets its BatchNorm statistics recomputed on
training images (:func:`swag.update_bn`); the last iterate keeps its own.

Usage::

    .venv/bin/python experiments/averaging_cnn.py --seeds 0 1 --out runs/averaging_cnn \
        --docs docs/img
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import _common
import torch
from torch import Tensor, nn
from tqdm import tqdm

import swag
from swag.bench import PRESETS, BenchConfig, small_cnn
from swag.schedules import SWAGDecay

DECAYS = (0.99, 0.995, 0.998, 0.999, 0.9995)
WINDOWS = (2, 5, 10)  # LAWA: epoch-end checkpoints
SIGMA_RELS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25)
NLL_TOL, ACC_TOL = 0.01, 0.005  # "about the same" for claim 1
METHODS = (
    "SGD (last iterate)",
    "SWA",
    "SWA run (last iterate)",
    "EMA (SWA run)",
    "EMA (SGD run)",
    "LAWA (SGD run)",
    "post-hoc EMA (SGD run)",
    "equal average (SGD run)",
)
METRICS = ("accuracy", "nll")


@dataclass(frozen=True)
class Config:
    """The regime (``swag bench``'s preset) and post-hoc EMA's steps between snapshots."""

    bench: BenchConfig = PRESETS["default"]
    posthoc_every: int = 20


QUICK = Config(PRESETS["smoke"], posthoc_every=2)


class Scorer:
    """Accuracy and NLL of a parameter vector on the validation and test sets, BN refreshed."""

    def __init__(self, model: nn.Module, data: _common.Images, b: BenchConfig) -> None:
        self.probe = copy.deepcopy(model)
        self.layout = swag.ParamLayout.from_model(model)
        self.data = data
        n = b.bn_batches * b.batch_size
        self.bn = list(torch.split(data.x[:n], b.batch_size))

    @torch.no_grad()
    def __call__(
        self, theta: Tensor | None, model: nn.Module | None = None
    ) -> dict[str, dict[str, float]]:
        """``{"val": {...}, "test": {...}}`` for ``theta`` (BN refreshed) or ``model`` as is."""
        if model is None:
            assert theta is not None
            self.layout.scatter(theta, self.probe)
            swag.update_bn(self.bn, self.probe)
            model = self.probe
        model.eval()
        out = {}
        for split, (x, y) in {
            "val": (self.data.val_x, self.data.val_y),
            "test": (self.data.test_x, self.data.test_y),
        }.items():
            probs = torch.cat([model(xb).softmax(-1) for xb in torch.split(x, 1000)])
            out[split] = {
                "accuracy": swag.metrics.accuracy(probs, y),
                "nll": swag.metrics.nll(probs, y),
            }
        return out


def mean_only(model: nn.Module, rule: swag.family.averaging.AveragingRule | None) -> swag.Collector:
    """A collector of the mean (``rule`` None: the equal average); LAWA needs its variance."""
    return swag.Collector(model, 0, average=rule, variance=isinstance(rule, swag.LAWA))


def train_run(
    cfg: Config, data: _common.Images, seed: int, swa: bool
) -> tuple[nn.Module, dict[str, swag.Collector], swag.PostHocEMA, float]:
    """One run (SWA schedule if ``swa`` else SGD's) with its averages: ``(model, collectors
    by name, post-hoc EMA, CPU seconds)``."""
    cpu, b = time.process_time(), cfg.bench
    spe = -(-len(data.x) // b.batch_size)
    total, swa_start = b.epochs * spe, (b.epochs - b.swa_epochs) * spe
    swa_decay = SWAGDecay(swa_start, b.swa_lr / b.lr)
    factor = swa_decay if swa else SWAGDecay(total, 0.01)
    when = swa_decay.collect_every(max(spe // b.collects_per_epoch, 1))  # the SWA run's steps
    torch.manual_seed(seed)  # experiment script: initialisation and dropout
    model = small_cnn(b.width, b.dropout)
    opt = torch.optim.SGD(
        model.parameters(), lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    every_step = {f"EMA {d}": mean_only(model, swag.EMA(d)) for d in DECAYS}
    equal = mean_only(model, None)
    lawa = {} if swa else {f"LAWA {k}": mean_only(model, swag.LAWA(k)) for k in WINDOWS}
    posthoc = swag.PostHocEMA(model, every=cfg.posthoc_every)

    def after_step(step: int) -> None:
        sched.step()
        for c in every_step.values():
            c.collect()
        posthoc.collect()
        if when(step):
            equal.collect()

    def after_epoch(epoch: int) -> None:
        for c in lawa.values():
            c.collect()

    name = "SWA" if swa else "SGD"
    _common.train(
        model, opt, data.x, data.y, epochs=b.epochs, batch_size=b.batch_size,
        generator=torch.Generator().manual_seed(seed), after_step=after_step,
        after_epoch=after_epoch, desc=f"seed {seed}, {name} run",
    )  # fmt: skip
    return model, {**every_step, **lawa, "equal": equal}, posthoc, time.process_time() - cpu


Scores = dict[str, dict[str, float]]


def best(candidates: Mapping[str, Scores]) -> tuple[str, Scores]:
    """The candidate with the lowest validation NLL."""
    name = min(candidates, key=lambda k: candidates[k]["val"]["nll"])
    return name, candidates[name]


def run_seed(cfg: Config, seed: int) -> dict[str, Any]:
    """Both runs of one seed; per method the test metrics and what validation chose."""
    b = cfg.bench
    data = _common.fashion_mnist(b.train_size, b.test_size, seed=seed, val_size=b.val_size)
    sgd, sgd_avg, posthoc, sgd_cpu = train_run(cfg, data, seed, swa=False)
    swa, swa_avg, _, swa_cpu = train_run(cfg, data, seed, swa=True)
    score = Scorer(sgd, data, cfg.bench)
    ema_swa = {k: score(c.mean) for k, c in swa_avg.items() if k.startswith("EMA")}
    ema_sgd = {k: score(c.mean) for k, c in sgd_avg.items() if k.startswith("EMA")}
    lawa = {k: score(c.mean) for k, c in sgd_avg.items() if k.startswith("LAWA")}
    post = {f"σ_rel {s}": score(posthoc.reconstruct(sigma_rel=s)) for s in SIGMA_RELS}
    chosen = {
        "EMA (SWA run)": best(ema_swa),
        "EMA (SGD run)": best(ema_sgd),
        "LAWA (SGD run)": best(lawa),
        "post-hoc EMA (SGD run)": best(post),
    }
    scores = {
        "SGD (last iterate)": score(None, sgd),
        "SWA": score(swa_avg["equal"].mean),
        "SWA run (last iterate)": score(None, swa),
        **{m: s for m, (_, s) in chosen.items()},
        "equal average (SGD run)": score(sgd_avg["equal"].mean),
    }
    return {
        "test": {m: scores[m]["test"] for m in METHODS},
        "val": {m: scores[m]["val"] for m in METHODS},
        "chosen": {m: k for m, (k, _) in chosen.items()},
        "candidates": {
            "EMA (SWA run)": ema_swa,
            "EMA (SGD run)": ema_sgd,
            "LAWA": lawa,
            "post-hoc EMA": post,
        },
        "cpu_seconds": {"SGD run": sgd_cpu, "SWA run": swa_cpu},
    }


def claims(runs: Sequence[Mapping[str, Any]]) -> list[_common.Claim]:
    """The two claims' verdicts from the per-seed test metrics."""
    test = [r["test"] for r in runs]
    out = []
    for ema in ("EMA (SWA run)", "EMA (SGD run)"):
        d_nll = [t[ema]["nll"] - t["SWA"]["nll"] for t in test]
        d_acc = [t[ema]["accuracy"] - t["SWA"]["accuracy"] for t in test]
        same = [abs(n) <= NLL_TOL and abs(a) <= ACC_TOL for n, a in zip(d_nll, d_acc, strict=True)]
        out.append(
            _common.Claim(
                f"{ema} performs about the same as SWA (|Δ NLL| ≤ {NLL_TOL}, |Δ acc| ≤ {ACC_TOL})",
                _common.verdict(same),
                {"nll_minus_swa": d_nll, "accuracy_minus_swa": d_acc},
            )
        )
    rivals = [m for m in METHODS if m != "SWA"]
    nll_best = [all(t["SWA"]["nll"] < t[m]["nll"] for m in rivals) for t in test]
    acc_best = [all(t["SWA"]["accuracy"] > t[m]["accuracy"] for m in rivals) for t in test]
    out.append(
        _common.Claim(
            "an equal average with the modified LR schedule (SWA) is best: lowest test NLL and "
            "highest test accuracy of all methods",
            _common.verdict(nll_best + acc_best),
            {
                "swa_best_nll_per_seed": nll_best,
                "swa_best_accuracy_per_seed": acc_best,
                "best_nll_method_per_seed": [min(t, key=lambda m: t[m]["nll"]) for t in test],
                "best_accuracy_method_per_seed": [
                    max(t, key=lambda m: t[m]["accuracy"]) for t in test
                ],
            },
        )
    )
    return out


def markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    """The test table (mean ± std over seeds), the paired differences to SWA, the choices."""
    test = [r["test"] for r in runs]
    text = _common.table(["method", *METRICS], _common.seed_rows(test, METHODS, METRICS))
    pairs = [(m, "SWA") for m in METHODS if m != "SWA"]
    text += "\n" + _common.table(["paired", *METRICS], _common.paired_rows(test, pairs, METRICS))
    chosen = "; ".join(f"{m}: {', '.join(r['chosen'][m] for r in runs)}" for m in runs[0]["chosen"])
    return text + f"\nChosen on validation NLL, per seed: {chosen}.\n"


def plot(runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Test NLL and accuracy per method: mean over seeds, the bar spanning ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [[r["test"][m][metric] for r in runs] for m in METHODS]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.barh(range(len(METHODS)), means, xerr=stds, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(METHODS)), METHODS if metric == METRICS[0] else [""] * len(METHODS))
        ax.invert_yaxis()
        low, high = min(means) - 2 * max(stds) - 0.005, max(means) + 2 * max(stds) + 0.005
        ax.set_xlim(low, high)
        ax.set_xlabel(f"test {metric} ({'higher' if metric == 'accuracy' else 'lower'} is better)")
    fig.suptitle(f"small CNN on Fashion-MNIST, seeds {', '.join(str(r['seed']) for r in runs)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every seed, print the table, write the results folder (and the plot to ``--docs``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", type=Path, default=Path("runs/averaging_cnn"))
    p.add_argument("--docs", type=Path, help="also write the plot here (e.g. docs/img)")
    p.add_argument("--epochs", type=int, help="override the regime's epochs (swa_epochs = half)")
    p.add_argument("--quick", action="store_true", help="a tiny run for the tests")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.epochs:
        cfg = replace(cfg, bench=cfg.bench.replace(epochs=args.epochs, swa_epochs=args.epochs // 2))
    torch.set_num_threads(1)
    runs = [{"seed": s, **run_seed(cfg, s)} for s in tqdm(args.seeds, desc="seeds")]
    found = claims(runs)
    text = markdown(runs)
    print(text)
    results = _common.Results("averaging_cnn", found, {"runs": runs}, asdict(cfg), args.seeds)
    _common.write(args.out, results, text, lambda folder: plot(runs, folder / "averaging_cnn.png"))
    if args.docs:
        plot(runs, args.docs / "averaging_cnn.png")
    return results.to_json()


if __name__ == "__main__":
    main()
