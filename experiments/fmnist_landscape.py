"""Loss line (SGD → SWA) and PCA loss plane of the benchmark CNN on Fashion-MNIST, and PCA+ESS.

One SWAG run of ``swag.bench``'s CNN (its schedule: SGD at ``lr``, then a constant ``swa_lr``
phase with ``collects_per_epoch`` collects per epoch, K = ``max_rank`` deviations). Then:

1. the train loss and test error along θ(t) = (1 − t)·θ_SGD + t·θ_SWA, t ∈ [−1, 2], where
   θ_SGD is the run's last iterate (SGD at the constant rate, which SWA averages) and θ_SWA
   the collector's mean (``docs/img/fmnist_loss_line.png``);
2. the train loss over the plane θ̂ + a·b₁ + b·b₂ of the first two PCA directions, with the
   SWAG Gaussian's (scale 0.5) density contours and the SGD iterate marked
   (``docs/img/fmnist_loss_plane.png``);
3. PCA (rank 5) + elliptical slice sampling on a training subset, timed: seconds and forward
   passes per sample, and the test NLL / accuracy of its Bayesian model average beside SWA's
   and SWAG's.

Every grid point and sample gets a BatchNorm refresh on ``bn_batches`` training batches.

Usage::

    python experiments/fmnist_landscape.py --out runs/fmnist_landscape --docs docs/img
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import _common
import torch
from torch import Tensor

import swag
from swag.bench import PRESETS, Progress, train
from swag.data import load_fashion_mnist
from swag.landscape import Plane, scan_line, scan_plane
from swag.plots import loss_line, loss_plane
from swag.subspace import Subspace, SubspaceLikelihood, SubspacePosterior, elliptical_slice


def chunks(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def nll_acc(probs: Tensor, y: Tensor) -> dict[str, float]:
    return {
        "nll": float(-probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()),
        "accuracy": float((probs.argmax(1) == y).float().mean()),
    }


def valley(ts: Tensor, train_loss: Tensor) -> _common.Claim:
    """The SWA paper's picture: along SGD → SWA, the train loss is lower at SWA (t = 1) than at
    SGD (t = 0): SGD ends on the wall of a valley, SWA nearer its floor."""
    at = {name: int((ts - t).abs().argmin()) for name, t in (("SGD", 0.0), ("SWA", 1.0))}
    loss = {
        f"train loss at t = {float(ts[i]):.3g} ({k})": float(train_loss[i]) for k, i in at.items()
    }
    sgd, swa = loss.values()
    return _common.Claim("SGD ends on the wall of a wide valley, SWA near its floor "
                         "(train loss lower at SWA than at SGD)",
                         _common.verdict([swa < sgd]), loss)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    defaults = dict(
        train_size=20000, eval_size=2000, epochs=6, swa_epochs=3, line_points=25, grid=13,
        ess_samples=10, ess_size=5000, temperature=1.0, seed=0, threads=1,
        out=Path("runs/fmnist_landscape"), docs=None,
    )  # fmt: skip
    helps = {
        "eval_size": "train/test points per grid point", "grid": "grid points per plane axis",
        "ess_size": "training points in ESS's likelihood", "docs": "also write the PNGs here",
    }  # fmt: skip
    p = _common.parser(__doc__, defaults, helps=helps)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PRESETS["short"].replace(  # the preset these numbers were measured with
        epochs=args.epochs, swa_epochs=args.swa_epochs, train_size=args.train_size
    )
    g = torch.Generator().manual_seed(args.seed)
    x, y = load_fashion_mnist("train")
    order = torch.randperm(len(x), generator=g)[: args.train_size]
    x, y = x[order], y[order]
    tx, ty = load_fashion_mnist("test")
    tx, ty = tx[: args.eval_size], ty[: args.eval_size]
    start = time.perf_counter()
    run = train(
        cfg,
        x,
        y,
        kind="swag",
        seed=args.seed,
        device=torch.device("cpu"),
        desc="SWAG",
        progress=Progress(),
    )
    assert run.collector is not None
    post = run.collector.posterior()
    sgd = swag.PointPosterior.from_model(run.model).mean
    loaders = {
        "train": chunks(x[: args.eval_size], y[: args.eval_size], 500),
        "test": chunks(tx, ty, 500),
    }
    bn = [xb for xb, _ in chunks(x, y, cfg.batch_size)[: cfg.bn_batches]]
    common = {"options": swag.PredictOptions(bn=swag.BNRefresh(bn), progress=True)}
    ts = torch.linspace(-1.0, 2.0, args.line_points)
    line = scan_line(run.model, post.layout, sgd, post.mean, loaders, ts=ts, **common)
    # with n = K iterates the first deviation is 0, so only K − 1 directions exist
    sub = Subspace.pca(post, rank=min(5, post.rank - (post.n == post.rank)))
    plane = Plane.from_subspace(sub)
    sgd_ab = plane.coords(sgd)
    reach = max(4.0, 1.3 * float(sgd_ab.abs().max()))
    axis = torch.linspace(-reach, reach, args.grid)
    surf = scan_plane(run.model, post.layout, plane, loaders, as_=axis, bs=axis, **common)
    figures = {
        "fmnist_loss_line.png": loss_line(
            line.ts, line.metrics["train_loss"], line.metrics["test_error"], labels=("SGD", "SWA")
        ),
        "fmnist_loss_plane.png": loss_plane(
            surf.as_,
            surf.bs,
            surf.metrics["train_loss"],
            label="train loss (nats)",
            points={"SWA": plane.coords(post.mean), "SGD (last iterate)": sgd_ab},
            gaussian=plane.gaussian(post, scale=0.5),
        ),
    }
    figures["fmnist_loss_plane.png"].axes[0].set(xlabel="z₁ (PCA 1)", ylabel="z₂ (PCA 2)")

    # PCA + ESS on a training subset, with BN statistics of the SWA weights during sampling
    swa_model = swag.PointPosterior(post.mean, post.layout).to_model(run.model)
    swag.update_bn(bn, swa_model)
    lik = SubspaceLikelihood(swa_model, sub, chunks(x[: args.ess_size], y[: args.ess_size], 1000))
    t0 = time.perf_counter()
    chain = elliptical_slice(
        lik, sub.dim, args.ess_samples, temperature=args.temperature,
        generator=torch.Generator().manual_seed(args.seed), progress=True,
    )  # fmt: skip
    ess_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    lik(torch.zeros(sub.dim))
    pass_seconds = time.perf_counter() - t1
    ess_post = SubspacePosterior.from_ess(sub, chain, temperature=args.temperature, prior_std=1.0)
    test = [tx]
    scores = {}
    methods: dict[str, tuple[swag.Posterior, int]] = {
        "SWA": (swag.PointPosterior(post.mean, post.layout), 1),
        "SWAG": (post, args.ess_samples),
        "PCA+ESS": (ess_post, args.ess_samples),
    }
    for name, (posterior, n) in methods.items():
        probs = swag.predict(
            posterior,
            run.model,
            test,
            num_samples=n,
            generator=torch.Generator().manual_seed(args.seed),
            options=swag.PredictOptions(bn=swag.BNRefresh(bn)),
        )
        scores[name] = nll_acc(probs, ty)
    result = {
        "parameters": post.layout.size,
        "train_seconds": run.seconds,
        "ess": {
            "samples": args.ess_samples,
            "likelihood_points": args.ess_size,
            "temperature": args.temperature,
            "seconds_per_sample": ess_seconds / args.ess_samples,
            "passes_per_sample": chain.evaluations_per_sample,
            "seconds_per_pass": pass_seconds,
        },
        "pca_singular_values": sub.basis.norm(dim=1).tolist(),
        "line": {"ts": line.ts.tolist(), **{k: v.tolist() for k, v in line.metrics.items()}},
        "plane": {
            "axis": axis.tolist(),
            **{k: v.tolist() for k, v in surf.metrics.items()},
            "gaussian": [t.tolist() for t in plane.gaussian(post, scale=0.5)],
        },
        "sgd_plane_coords": sgd_ab.tolist(),
        "test": scores,
        "total_seconds": time.perf_counter() - start,
    }
    assert all(math.isfinite(v["nll"]) for v in scores.values())

    def save(folder: Path) -> None:
        for name, fig in figures.items():
            fig.savefig(folder / name, dpi=110)

    rows = [[m, f"{v['nll']:.4f}", f"{100 * v['accuracy']:.2f}%"] for m, v in scores.items()]
    text = _common.table(["method", "NLL", "accuracy"], rows)
    settings = _common.settings(args)
    doc = _common.Results("fmnist_landscape", [valley(line.ts, line.metrics["train_loss"])],
                          result, settings, [args.seed])  # fmt: skip
    _common.write(args.out, doc, text, save)
    if args.docs:
        save(args.docs)
    return doc.to_json()


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
