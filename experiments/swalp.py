"""SWALP at our scale: 8-bit block-floating-point training on Fashion-MNIST, averaged in float32.

Per seed, training runs of the benchmark's CNN (``swag.bench.small_cnn``) on a subset of
Fashion-MNIST, float and 8-bit, under one of two protocols:

- ``--protocol equal`` (four runs, the same number of steps each): float SGD and 8-bit SGD
  follow the SWAG paper's decaying rate (``lr`` to ``0.01·lr``); float SWA and 8-bit
  SWALP/SWAG decay over the first ``epochs − swa_epochs`` epochs to ``swa_lr``, then hold it
  while a :class:`swag.Collector` (float32) records ``--collects`` iterates per epoch;
- ``--protocol paper`` (two runs, the SWALP reference code's protocol): SGD decays over
  ``epochs``; averaging continues the same run ``swa_epochs`` more at ``swa_lr``, so SWA and
  SWALP get ``swa_epochs`` extra epochs.

SWALP is the collector's mean, SWAG samples from it.

"8-bit" is SWALP's setting (:mod:`swag.lowp`): weights, gradients, momentum, activations and
errors in 8-bit block floating point with stochastic rounding. 8-bit SGD is scored as trained
(8-bit activations at test time) and, for reference, with float activations. Averaged models
are scored in float after a BatchNorm refresh. The script also measures how much of the SWAG
variance of 8-bit iterates is rounding noise (see docs/swalp.md).

Usage::

    python experiments/swalp.py --seeds 0 1 2 --out runs/swalp
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

import swag
from swag.bench import batches, small_cnn
from swag.data import load_fashion_mnist
from swag.lowp import BlockFloat, QuantizedOptimizer, quantize_model
from swag.schedules import SWAGDecay

METHODS = (
    "float SGD", "float SWA", "8-bit SGD", "8-bit SGD (float activations)", "8-bit SWALP",
    "8-bit SWAG",
)  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--test-size", type=int, default=5_000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--swa-epochs", type=int, default=3)
    p.add_argument("--collects", type=int, default=4, help="collects per epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--swa-lr", type=float, default=0.02)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--samples", type=int, default=10, help="SWAG samples")
    p.add_argument("--max-rank", type=int, default=10)
    p.add_argument("--protocol", choices=("equal", "paper"), default="equal")
    p.add_argument("--out", type=Path, default=Path("runs/swalp"))
    return p.parse_args(argv)


def fit(
    args: argparse.Namespace, x: Tensor, y: Tensor, seed: int, *, low: bool, average: bool
) -> tuple[nn.Module, swag.Collector | None, dict[str, Tensor], float]:
    """One run: the model (with its 8-bit hooks when ``low``), its collector, the weights at the
    end of the decaying schedule (the SGD result), and the seconds per step.

    ``--protocol equal``: an SGD run decays over all ``epochs``; an averaging run decays over the
    first ``epochs − swa_epochs`` to ``swa_lr`` and collects in the rest. ``--protocol paper``
    (the SWALP code's): every run decays over ``epochs`` like SGD; an averaging run then goes
    on ``swa_epochs`` more at ``swa_lr``, collecting, so averaging gets extra epochs.
    """
    spe = -(-len(x) // args.batch_size)
    extend = average and args.protocol == "paper"
    epochs = args.epochs + (args.swa_epochs if extend else 0)
    if average and not extend:
        window, final = (args.epochs - args.swa_epochs) * spe, args.swa_lr
    else:
        window, final = args.epochs * spe, args.lr * 0.01
    sgd_end = args.epochs * spe  # where the decaying schedule ends
    base: float = args.lr
    decay = SWAGDecay(window, final / base)

    def lr(s: int) -> float:
        swa_lr: float = args.swa_lr
        return swa_lr if extend and s >= sgd_end else base * decay(s)

    every = max(spe // args.collects, 1)
    torch.manual_seed(seed)  # this script owns its process: initialisation and dropout
    model = small_cnn(args.width)
    g = torch.Generator().manual_seed(seed)
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: lr(s) / args.lr)
    opt: torch.optim.Optimizer | QuantizedOptimizer = sgd
    if low:
        rounding = torch.Generator().manual_seed(10_000 + seed)
        quantize_model(model, BlockFloat(), BlockFloat(), generator=rounding)
        opt = QuantizedOptimizer(sgd, generator=rounding)
    collector = swag.Collector(model, max_rank=args.max_rank) if average else None
    start = window if not extend else sgd_end  # collecting starts here
    sgd_state = copy.deepcopy(model.state_dict())
    clock, step = time.perf_counter(), 0
    for _ in range(epochs):
        for xb, yb in batches(x, y, args.batch_size, g):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            step += 1
            if step == sgd_end:
                sgd_state = copy.deepcopy(model.state_dict())
            if collector is not None and step > start and (step - start) % every == 0:
                collector.collect()
    model.eval()
    return model, collector, sgd_state, (time.perf_counter() - clock) / step


def noise_share(model: nn.Module, post: swag.SWAGPosterior) -> dict[str, float]:
    """How the SWAG variance of 8-bit iterates compares with the rounding grid δ of each row.

    Stochastic rounding alone adds δ²·f(1−f) to a coordinate's variance (1/6·δ² on average over
    a uniform fractional part f). Reports the median of var/δ² and the share of coordinates
    whose variance is below δ²/4, the most rounding alone can give.
    """
    ratios = []
    for name, var in zip(post.layout.names, post.layout.split(post.std.square()), strict=True):
        w = model.get_parameter(name).detach()
        amax = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) if w.dim() >= 2 else None
        amax = w.abs().amax() if amax is None else amax
        delta = torch.exp2(torch.floor(torch.log2(amax.clamp_min(1e-30))) - 6)
        ratios.append((var / delta.square()).expand_as(w).reshape(-1))
    r = torch.cat(ratios)
    return {
        "median_var_over_delta2": r.median().item(),
        "below_quarter": (r < 0.25).float().mean().item(),
    }


def run_seed(args: argparse.Namespace, seed: int, data: dict[str, Tensor]) -> dict[str, Any]:
    x, y, tx, ty = data["x"], data["y"], data["tx"], data["ty"]
    test = list(torch.split(tx, 1000))
    bn = [xb for xb, _ in batches(x, y, args.batch_size, torch.Generator().manual_seed(0))][:20]
    g = torch.Generator().manual_seed(seed)

    def score(
        post: swag.Posterior, model: nn.Module, bn: swag.BNRefresh | Literal[False], **kw: Any
    ) -> dict[str, float]:
        options = swag.PredictOptions(bn=bn)
        probs = swag.predict(post, model, test, generator=g, options=options, **kw)
        return {"accuracy": swag.metrics.accuracy(probs, ty), "nll": swag.metrics.nll(probs, ty)}

    def with_state(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
        out = copy.deepcopy(model)  # keeps the 8-bit hooks of an 8-bit model
        out.load_state_dict(state)
        return out

    res: dict[str, Any] = {}
    cost: dict[str, float] = {}
    paper = args.protocol == "paper"
    model, col, state, cost["float"] = fit(args, x, y, seed, low=False, average=paper)
    sgd_model = with_state(model, state)
    refresh = swag.BNRefresh(bn)
    res["float SGD"] = score(swag.PointPosterior.from_model(sgd_model), sgd_model, bn=False)
    if not paper:
        model, col, _, _ = fit(args, x, y, seed, low=False, average=True)
    assert col is not None
    res["float SWA"] = score(swag.PointPosterior(col.mean, col.layout), model, bn=refresh)
    model, col, state, cost["8-bit"] = fit(args, x, y, seed, low=True, average=paper)
    sgd_model = with_state(model, state)
    point = swag.PointPosterior.from_model(sgd_model)
    res["8-bit SGD"] = score(point, sgd_model, bn=False)  # the hooks travel with the copy
    plain = small_cnn(args.width)
    plain.load_state_dict(state)
    res["8-bit SGD (float activations)"] = score(point, plain, bn=False)
    if not paper:
        model, col, _, _ = fit(args, x, y, seed, low=True, average=True)
    assert col is not None
    plain = small_cnn(args.width)
    plain.load_state_dict(model.state_dict())
    post = col.posterior()
    res["8-bit SWALP"] = score(swag.PointPosterior(col.mean, col.layout), plain, bn=refresh)
    res["8-bit SWAG"] = score(post, plain, bn=refresh, num_samples=args.samples, scale=0.5)
    return {
        "seed": seed,
        "results": res,
        "seconds_per_step": cost,
        "grid": noise_share(model, post),
    }


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| method | test error % | NLL |", "|---|---|---|"]
    for m in METHODS:
        err = [100 * (1 - r["results"][m]["accuracy"]) for r in runs]
        nll = [r["results"][m]["nll"] for r in runs]
        lines.append(
            f"| {m} | {statistics.mean(err):.2f} ± {_sd(err):.2f} | "
            f"{statistics.mean(nll):.3f} ± {_sd(nll):.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("train")
    tx, ty = load_fashion_mnist("test")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.train_size]
    data = {"x": x[order], "y": y[order], "tx": tx[: args.test_size], "ty": ty[: args.test_size]}
    runs = [run_seed(args, s, data) for s in args.seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs}))
    (args.out / "results.md").write_text(table(runs))
    return runs


if __name__ == "__main__":
    for run in main():
        print(json.dumps(run))
