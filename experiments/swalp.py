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
import time
from pathlib import Path
from typing import Any, Literal

import _common
import torch
from torch import Tensor, nn

import swag
from swag.bench import batches, small_cnn
from swag.lowp import BlockFloat, QuantizedOptimizer, quantize_model
from swag.schedules import SWAGDecay

ACC_TOL = 0.005  # "as accurate as": half a point of test accuracy
METHODS = (
    "float SGD", "float SWA", "8-bit SGD", "8-bit SGD (float activations)", "8-bit SWALP",
    "8-bit SWAG",
)  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = dict(
        seeds=[0, 1, 2], train_size=10_000, test_size=5_000, epochs=8, swa_epochs=3, collects=4,
        batch_size=128, lr=0.05, swa_lr=0.02, width=8, samples=10, max_rank=10,
        protocol="equal", out=Path("runs/swalp"),
    )  # fmt: skip
    helps = {"collects": "collects per epoch", "samples": "SWAG samples"}
    choices = {"protocol": ("equal", "paper")}
    return _common.parser(__doc__, defaults, helps=helps, choices=choices).parse_args(argv)


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
    clock = time.perf_counter()

    def after_step(step: int) -> None:
        nonlocal sgd_state
        sched.step()
        if step == sgd_end:
            sgd_state = copy.deepcopy(model.state_dict())
        if collector is not None and step > start and (step - start) % every == 0:
            collector.collect()

    step = _common.train(model, opt, x, y, epochs=epochs, batch_size=args.batch_size,
                         generator=g, after_step=after_step)  # fmt: skip
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


def run_seed(args: argparse.Namespace, seed: int, data: _common.Images) -> dict[str, Any]:
    x, y, tx, ty = data.x, data.y, data.test_x, data.test_y
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


def table(runs: list[dict[str, Any]]) -> str:
    """Test error (%) and NLL per method, mean ± std over seeds."""
    rows = [
        [m, _common.cell([100 * (1 - r["results"][m]["accuracy"]) for r in runs], 2),
         _common.cell([r["results"][m]["nll"] for r in runs], 3)]
        for m in METHODS
    ]  # fmt: skip
    return _common.table(["method", "test error %", "NLL"], rows)


def claims(runs: list[dict[str, Any]]) -> list[_common.Claim]:
    """SWALP's ordering, per seed: 8-bit SWALP ≈ float SGD (accuracy within ``ACC_TOL``) and
    8-bit SWALP more accurate than 8-bit SGD."""
    results = [r["results"] for r in runs]
    return [
        _common.paired_claim(f"8-bit SWALP is as accurate as float SGD (within {ACC_TOL})",
                             results, ("8-bit SWALP", "float SGD"), "accuracy",
                             lambda d: abs(d) <= ACC_TOL),
        _common.paired_claim("8-bit SWALP is more accurate than 8-bit SGD", results,
                             ("8-bit SWALP", "8-bit SGD"), "accuracy", lambda d: d > 0),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    torch.set_num_threads(1)
    data = _common.fashion_mnist(args.train_size, args.test_size)
    runs = [run_seed(args, s, data) for s in args.seeds]
    doc = _common.Results("swalp", claims(runs), {"runs": runs}, _common.settings(args), args.seeds)
    _common.write(args.out, doc, table(runs))
    return runs


if __name__ == "__main__":
    for run in main():
        print(json.dumps(run))
