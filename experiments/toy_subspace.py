"""1-D regression with a gap: predictive mean ± 2σ of SGD, SWAG, PCA+ESS, PCA+VI, an ensemble.

The subspace-inference paper's toy question (Izmailov et al., 2019, Fig. 1): does the method
grow its uncertainty *between* two clusters of data, where no point constrains the function?
Data: 20 + 20 points, x ~ U[−1, −0.35] and U[0.35, 1], y = sin(4x) + 0.3·x + ε, ε ~ N(0, 0.1²).
Model: MLP 1 → 50 → 50 → 1 (tanh), Gaussian likelihood with the known noise variance 0.1².

* **SGD**: minibatch SGD (batch 8, momentum 0.9, lr 0.01, weight decay 1e-4) on the squared
  error, ``sgd_epochs`` epochs;
* **SWAG**: ``swag_epochs`` more epochs at the constant ``swa_lr`` (0.05: a high rate, so the
  iterates explore), 20 evenly spaced ``collect()`` calls (K = 20), 30 samples at scale 0.5;
* **PCA+ESS** / **PCA+VI**: the rank-``rank`` PCA subspace of that SWAG, prior N(0, I),
  temperature ``T``; ESS keeps ``ess_samples`` states after ``burn_in``; VI fits a
  full-covariance Gaussian;
* **Ensemble**: 5 SGD networks from different initialisations.

Usage::

    python experiments/toy_subspace.py --out runs/toy_subspace --docs docs/img
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import _common
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import swag
from swag.subspace import (
    Subspace,
    SubspaceLikelihood,
    SubspacePosterior,
    elliptical_slice,
    fit_vi,
)

NOISE = 0.1


def make_data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    left = -1.0 + 0.65 * torch.rand(20, generator=g)
    right = 0.35 + 0.65 * torch.rand(20, generator=g)
    x = torch.cat([left, right])
    y = torch.sin(4 * x) + 0.3 * x + NOISE * torch.randn(40, generator=g)
    return x[:, None], y


def mlp(seed: int) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1)
        )


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    *,
    seed: int,
    lr: float,
    collector: swag.Collector | None = None,
    every: int = 1,
) -> None:
    """Minibatch SGD (batch 8, momentum 0.9, weight decay 1e-4) on the mean squared error."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)

    def collect(epoch: int) -> None:
        if collector is not None and epoch % every == 0:
            collector.collect()

    _common.train(model, opt, x, y, epochs=epochs, batch_size=8,
                  generator=torch.Generator().manual_seed(seed), loss_fn=squared_error,
                  after_epoch=collect)  # fmt: skip


def squared_error(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of ``out`` ``(B, 1)`` against ``y`` ``(B,)``."""
    return (out.squeeze(-1) - y).square().mean()


RATIO = 2.0  # "in-between uncertainty": the gap's epistemic sd at least this times the data's


def claims(summary: dict[str, dict[str, float]]) -> list[_common.Claim]:
    """In-between uncertainty of the subspace methods: the gap's epistemic sd ≥ ``RATIO`` × the
    data's, per method."""
    ratios = {
        m: v["epistemic_sd_in_gap"] / max(v["epistemic_sd_on_data"], 1e-12)
        for m, v in summary.items()
        if m.startswith("PCA")
    }
    text = (
        f"subspace inference (PCA+ESS, PCA+VI) gives in-between uncertainty (gap ≥ {RATIO}× data)"
    )
    return [_common.Claim(text, _common.verdict([r >= RATIO for r in ratios.values()]), ratios)]


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    defaults = dict(
        seed=0, rank=5, temperature=1.0, prior_std=1.0, ess_samples=100, burn_in=50,
        vi_epochs=300, sgd_epochs=600, swag_epochs=400, lr=0.01, swa_lr=0.05, members=5,
        out=Path("runs/toy_subspace"), docs=None,
    )  # fmt: skip
    p = _common.parser(__doc__, defaults, helps={"docs": "also write the PNG here"})
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    x, y = make_data(args.seed)
    model = mlp(args.seed)
    fit(model, x, y, args.sgd_epochs, seed=args.seed, lr=args.lr)
    sgd = swag.PointPosterior.from_model(model)
    collector = swag.Collector(model, max_rank=20)
    every = max(args.swag_epochs // 20, 1)
    fit(
        model,
        x,
        y,
        args.swag_epochs,
        seed=args.seed + 1,
        lr=args.swa_lr,
        collector=collector,
        every=every,
    )
    post = collector.posterior()
    sub = Subspace.pca(post, rank=args.rank)
    swa_model = swag.PointPosterior(post.mean, post.layout).to_model(model)
    lik = SubspaceLikelihood(swa_model, sub, [(x, y)], likelihood="gaussian", noise_var=NOISE**2)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    chain = elliptical_slice(
        lik, sub.dim, args.ess_samples, burn_in=args.burn_in, temperature=args.temperature,
        prior_std=args.prior_std, generator=gen,
    )  # fmt: skip
    t_ess = time.perf_counter() - t0
    t0 = time.perf_counter()
    vi = fit_vi(
        lik,
        temperature=args.temperature,
        prior_std=args.prior_std,
        full=True,
        epochs=args.vi_epochs,
        lr=0.01,
        mc_samples=4,
        generator=gen,
    )
    t_vi = time.perf_counter() - t0
    members = []
    for m in range(args.members):
        net = sgd.to_model(model) if m == 0 else mlp(args.seed + 1000 + m)
        if m:
            fit(net, x, y, args.sgd_epochs, seed=args.seed + 1000 + m, lr=args.lr)
        members.append(swag.PointPosterior.from_model(net))
    record = {"temperature": args.temperature, "prior_std": args.prior_std}
    methods: dict[str, tuple[swag.Posterior, int, float]] = {
        "SGD": (sgd, 1, 0.5),
        "SWAG": (post, 30, 0.5),
        f"PCA({args.rank})+ESS": (
            SubspacePosterior.from_ess(sub, chain, **record),
            args.ess_samples,
            0.5,
        ),
        f"PCA({args.rank})+VI": (SubspacePosterior.from_vi(sub, vi, **record), 100, 0.5),
        f"Ensemble ({args.members})": (swag.MultiSWAG(members), args.members, 0.5),
    }
    grid = torch.linspace(-2.0, 2.0, 300)[:, None]
    gap = grid.squeeze(-1).abs() < 0.3
    fig = Figure(figsize=(15, 3.2), layout="constrained")
    axes = fig.subplots(1, len(methods), sharey=True)
    summary = {}
    for ax, (name, (posterior, n, scale)) in zip(axes, methods.items(), strict=True):
        mean, var = swag.predict(
            posterior,
            model,
            [grid],
            num_samples=n,
            scale=scale,
            generator=torch.Generator().manual_seed(args.seed),
            head=swag.GaussianRegression(noise_var=NOISE**2),
        )
        mean, var = mean.reshape(-1), var.reshape(-1)
        sd = var.sqrt()
        ax.fill_between(grid.squeeze(-1), mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.3)
        ax.plot(grid.squeeze(-1), mean, color="tab:blue")
        ax.scatter(x.squeeze(-1), y, s=8, color="black", zorder=3)
        ax.set(title=name, xlabel="x", ylim=(-3, 3))
        epistemic = (var - NOISE**2).clamp_min(0).sqrt()
        summary[name] = {
            "epistemic_sd_in_gap": float(epistemic[gap].mean()),
            "epistemic_sd_on_data": float(
                epistemic[(grid.squeeze(-1).abs() > 0.4) & (grid.squeeze(-1).abs() < 0.95)].mean()
            ),
        }
    axes[0].set_ylabel("y  (mean ± 2σ)")
    result = {
        "methods": summary,
        "ess": {"seconds": t_ess, "passes_per_sample": chain.evaluations_per_sample},
        "vi_seconds": t_vi,
        "pca_scales": sub.basis.norm(dim=1).tolist(),
        "total_seconds": time.perf_counter() - start,
    }
    assert all(math.isfinite(v["epistemic_sd_in_gap"]) for v in summary.values())
    rows = [[m, f"{v['epistemic_sd_in_gap']:.3f}", f"{v['epistemic_sd_on_data']:.3f}"]
            for m, v in summary.items()]  # fmt: skip
    text = _common.table(["method", "epistemic sd in the gap", "epistemic sd on the data"], rows)
    settings = _common.settings(args)
    doc = _common.Results("toy_subspace", claims(summary), result, settings, [args.seed])
    _common.write(
        args.out, doc, text, lambda folder: fig.savefig(folder / "toy_subspace.png", dpi=100)
    )
    if args.docs:
        fig.savefig(args.docs / "toy_subspace.png", dpi=100)
    return doc.to_json()


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
