"""UCI-style regression: SGD, SWA, SWAG, a deep ensemble and MultiSWAG, Gaussian likelihood.

On each random 90/10 split of a small regression table (diabetes, boston, autompg; all
offline), features and targets are standardized with training statistics, and a
one-hidden-layer MLP (50 ReLU units) with a mean and a variance output (softplus head) is
trained by Gaussian NLL with SGD. Methods, all scored in the original target units:

* **SGD**: that network (it is also ensemble member 0);
* **SWA** / **SWAG**: the same run continued at a constant learning rate ``swa_lr``, collecting
  once per epoch (``swag.Collector``, K = 20); SWA is the mean, SWAG the Bayesian model average
  of 30 samples at scale 0.5;
* **SGD, end of SWA phase**: the last iterate of that continued run, a point estimate with
  SWAG's training budget (it separates averaging and sampling from training longer);
* **Ensemble**: 5 independently initialized SGD networks (``MultiSWAG`` of ``PointPosterior``);
* **MultiSWAG**: each of the 5 continued as for SWAG, 30 samples from the mixture (6 each);
* **PCA+ESS** / **PCA+VI** (subspace inference, Izmailov et al., 2019): the PCA subspace of
  the SWAG run's deviations (rank ``subspace_rank``, all K = 20 by default, as the reference
  code's small-UCI runs), prior N(0, I) over z, the Gaussian likelihood of the training set
  tempered by T (default N/k, the reference code's default); ESS keeps ``ess_samples`` states
  after ``ess_burn_in``, VI fits a diagonal Gaussian over ``vi_epochs`` epochs; 30 draws.

Metrics per split: the test log-likelihood per point (nats) of the moment-matched Gaussian that
``swag.predict(..., output="gaussian")`` returns; the log-likelihood of the equal-weight mixture
of the per-network Gaussians (log-mean-exp over networks, as the SWAG paper's UCI code scores
sampled predictions); RMSE; the coverage of the central 90% interval. Each is reported as the
mean ± standard error over splits.

Usage::

    python experiments/regression.py --datasets diabetes boston autompg --splits 10 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import _common
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import swag
from swag.data import load_uci_regression, standardize, train_test_split
from swag.subspace import (
    Subspace,
    SubspaceLikelihood,
    SubspacePosterior,
    elliptical_slice,
    fit_vi,
)

METRICS = ("ll", "ll_mixture", "rmse", "coverage90")
Metrics = dict[str, float]


@dataclasses.dataclass(frozen=True)
class Config:
    """The training and inference protocol, shared by every dataset and split.

    SGD (momentum, weight decay, constant ``lr``) for ``epochs`` epochs, then SWAG: ``swag_epochs``
    more epochs of the same run at ``swa_lr`` with one collect per epoch, keeping the last
    ``max_rank`` deviations.
    """

    hidden: int = 50
    epochs: int = 200
    swag_epochs: int = 50
    lr: float = 1e-3
    swa_lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.1
    batch_size: int = 100
    max_rank: int = 20
    scale: float = 0.5
    num_samples: int = 30
    ensemble_size: int = 5
    test_fraction: float = 0.1
    subspace_rank: int = 20
    temperature: float = 0.0  # 0: N / subspace_rank
    prior_std: float = 1.0
    ess_samples: int = 30
    ess_burn_in: int = 10
    vi_epochs: int = 30


QUICK = {"epochs": 30, "swag_epochs": 10, "ess_samples": 6, "ess_burn_in": 2, "vi_epochs": 3}


class GaussianMLP(nn.Module):
    """One hidden ReLU layer; returns ``(B, 2)``: the mean and the variance ``softplus(·) + ε``.

    This is the output layout :func:`swag.predict` reads with ``output="gaussian"``.
    """

    def __init__(self, in_features: int, hidden: int, min_var: float = 1e-6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.min_var = min_var

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        var = nn.functional.softplus(out[..., 1]) + self.min_var
        return torch.stack((out[..., 0], var), dim=-1)


def seed_for(*labels: object) -> int:
    """A stable 32-bit seed from labels such as ``(seed, dataset, split, "member", m)``."""
    return zlib.crc32("/".join(map(str, labels)).encode())


@functools.cache
def load(dataset: str) -> tuple[Tensor, Tensor]:
    """``load_uci_regression(dataset)``, read once per process."""
    return load_uci_regression(dataset)


def gaussian_nll(out: Tensor, y: Tensor) -> Tensor:
    """The Gaussian NLL of targets ``y`` ``(B,)`` under ``out`` ``(B, 2)`` (mean, variance)."""
    return nn.functional.gaussian_nll_loss(out[:, 0], y, out[:, 1])


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    collector: swag.Collector | None = None,
) -> None:
    """``epochs`` shuffled passes of Gaussian-NLL minibatch steps; a ``collect()`` after each."""
    collect = None if collector is None else lambda _: collector.collect()
    _common.train(model, optimizer, x, y, epochs=epochs, batch_size=batch_size,
                  generator=generator, loss_fn=gaussian_nll, after_epoch=collect)  # fmt: skip


def train_sgd(
    cfg: Config, x: Tensor, y: Tensor, seed: int
) -> tuple[GaussianMLP, torch.optim.Optimizer, torch.Generator]:
    """One SGD network, with the optimizer and shuffling generator that a SWAG phase continues.

    Initialization draws from a forked global RNG seeded by ``seed`` (the caller's RNG is left
    as it was); shuffling from a generator seeded by ``seed + 1``.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GaussianMLP(x.shape[1], cfg.hidden)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    generator = torch.Generator().manual_seed(seed + 1)
    train_epochs(
        model, optimizer, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, generator=generator
    )
    return model, optimizer, generator


def continue_swag(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    x: Tensor,
    y: Tensor,
) -> swag.SWAGPosterior:
    """Go on training ``model`` at the constant rate ``swa_lr``, collecting once per epoch."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.swa_lr
    collector = swag.Collector(model, max_rank=cfg.max_rank)
    train_epochs(
        model,
        optimizer,
        x,
        y,
        epochs=cfg.swag_epochs,
        batch_size=cfg.batch_size,
        generator=generator,
        collector=collector,
    )
    return collector.posterior()


def subspace_posteriors(
    cfg: Config, post: swag.SWAGPosterior, model: nn.Module, x: Tensor, y: Tensor, seed: int
) -> dict[str, SubspacePosterior]:
    """PCA+ESS and PCA+VI in the PCA subspace of ``post``, on the standardized training set."""
    # with n = K iterates the first deviation θ₁ − θ̄₁ is 0, so only K − 1 directions exist
    sub = Subspace.pca(post, rank=min(cfg.subspace_rank, post.rank - (post.n == post.rank)))
    swa_model = swag.PointPosterior(post.mean, post.layout).to_model(model)
    loader = [
        (x[i : i + cfg.batch_size], y[i : i + cfg.batch_size])
        for i in range(0, len(x), cfg.batch_size)
    ]
    lik = SubspaceLikelihood(swa_model, sub, loader, likelihood="gaussian")
    temperature = cfg.temperature or len(x) / sub.dim
    g = torch.Generator().manual_seed(seed)
    chain = elliptical_slice(
        lik, sub.dim, cfg.ess_samples, burn_in=cfg.ess_burn_in, temperature=temperature,
        prior_std=cfg.prior_std, generator=g,
    )  # fmt: skip
    vi = fit_vi(
        lik, temperature=temperature, prior_std=cfg.prior_std, epochs=cfg.vi_epochs, generator=g
    )
    record = {"temperature": temperature, "prior_std": cfg.prior_std}
    return {
        "PCA+ESS": SubspacePosterior.from_ess(sub, chain, **record),
        "PCA+VI": SubspacePosterior.from_vi(sub, vi, **record),
    }


def score(
    posterior: swag.Posterior,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    y_mean: Tensor,
    y_std: Tensor,
    num_samples: int,
    scale: float,
    seed: int,
) -> Metrics:
    """Test metrics of ``posterior``'s predictive distribution, in the original units of ``y``.

    The standardized predictions ``(μ, σ²)`` map back to ``(s·μ + m, s²·σ²)``, so the Gaussian
    NLL in original units is the standardized one plus ``log s``.
    """

    def predict(reduce: bool) -> tuple[Tensor, Tensor]:
        mean, var = swag.predict(
            posterior,
            model,
            [x],
            num_samples=num_samples,
            scale=scale,
            generator=torch.Generator().manual_seed(seed),
            head=swag.GaussianRegression(),
            options=swag.PredictOptions(reduce=reduce),
        )
        return mean * y_std + y_mean, var * y_std**2

    mean, var = predict(reduce=True)
    means, variances = predict(reduce=False)  # the same draws: one Gaussian per network
    return {
        "ll": -swag.metrics.gaussian_nll(mean, var, y),
        "ll_mixture": -swag.metrics.gaussian_mixture_nll(means, variances, y),
        "rmse": swag.metrics.rmse(mean, y),
        "coverage90": swag.metrics.interval_coverage(mean, var, y, levels=(0.9,))[0.9],
    }


def run_split(cfg: Config, dataset: str, split: int, seed: int) -> dict[str, Metrics]:
    """Every method on one random train/test split of ``dataset``: ``{method: metrics}``."""
    x, y = load(dataset)
    split_generator = torch.Generator().manual_seed(seed_for(seed, dataset, split, "split"))
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_fraction=cfg.test_fraction, generator=split_generator
    )
    x_train, x_test = standardize(x_train, x_test)
    y_mean, y_std = y_train.mean(), y_train.std(correction=0)
    z_train = (y_train - y_mean) / y_std

    members = [
        train_sgd(cfg, x_train, z_train, seed_for(seed, dataset, split, "member", m))
        for m in range(cfg.ensemble_size)
    ]
    points = [swag.PointPosterior.from_model(model) for model, _, _ in members]
    swags = [continue_swag(cfg, *member, x_train, z_train) for member in members]
    model = members[0][0]  # now at the last iterate of its SWAG phase
    subspace = subspace_posteriors(
        cfg, swags[0], model, x_train, z_train, seed_for(seed, dataset, split, "subspace")
    )

    size = cfg.ensemble_size
    plans: dict[str, tuple[swag.Posterior, int]] = {
        "SGD": (points[0], 1),
        "SGD, end of SWA phase": (swag.PointPosterior.from_model(model), 1),
        "SWA": (swag.PointPosterior(swags[0].mean, swags[0].layout), 1),
        "SWAG": (swags[0], cfg.num_samples),
        f"Ensemble ({size})": (swag.MultiSWAG(points), size),
        f"MultiSWAG ({size})": (swag.MultiSWAG(swags), cfg.num_samples),
        "PCA+ESS": (subspace["PCA+ESS"], cfg.ess_samples),
        "PCA+VI": (subspace["PCA+VI"], cfg.num_samples),
    }
    predict_seed = seed_for(seed, dataset, split, "predict")
    return {
        name: score(
            post,
            model,
            x_test,
            y_test,
            y_mean=y_mean,
            y_std=y_std,
            num_samples=num_samples,
            scale=cfg.scale,
            seed=predict_seed,
        )
        for name, (post, num_samples) in plans.items()
    }


def mean_se(values: Sequence[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / √n; 0 for a single value)."""
    t = torch.tensor(values, dtype=torch.float64)
    se = t.std().item() / math.sqrt(len(t)) if len(t) > 1 else 0.0
    return {"mean": t.mean().item(), "se": se}


def summarize(runs: Sequence[dict[str, Metrics]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {metric: {"mean", "se"}}}`` over the splits of one dataset.

    Besides :data:`METRICS`, ``ll_vs_sgd`` is the paired difference ``ll − ll(SGD)`` on the same
    split: most of the spread of ``ll`` across splits comes from the test sets, which it cancels.
    """
    return {
        m: {
            **{k: mean_se([run[m][k] for run in runs]) for k in METRICS},
            "ll_vs_sgd": mean_se([run[m]["ll"] - run["SGD"]["ll"] for run in runs]),
        }
        for m in runs[0]
    }


def to_markdown(summary: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """The results table: one row per dataset and method, mean ± standard error."""
    header = ["dataset", "method", "test LL ↑", "LL − SGD (paired) ↑", "test LL, mixture ↑",
              "RMSE ↓", "90% coverage"]  # fmt: skip
    rows = [
        [dataset, method, *(
            "{mean:.{d}f} ± {se:.{d}f}".format(d=2 if k == "rmse" else 3, **metrics[k])
            for k in ("ll", "ll_vs_sgd", "ll_mixture", "rmse", "coverage90")
        )]
        for dataset, methods in summary.items()
        for method, metrics in methods.items()
    ]  # fmt: skip
    return _common.table(header, rows)


def claims(summary: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[_common.Claim]:
    """Per dataset (mean over splits): SWAG's test LL above SGD's (paired), and MultiSWAG's
    above the deep ensemble's."""
    first = next(iter(summary.values()))
    ens, multi = (next(m for m in first if m.startswith(k)) for k in ("Ensemble", "MultiSWAG"))
    swag_gain = {d: s["SWAG"]["ll_vs_sgd"]["mean"] for d, s in summary.items()}
    multi_gain = {d: s[multi]["ll"]["mean"] - s[ens]["ll"]["mean"] for d, s in summary.items()}
    return [
        _common.Claim("SWAG has a higher test LL than SGD (paired, mean over splits)",
                      _common.verdict([g > 0 for g in swag_gain.values()]),
                      {"ll SWAG − SGD": swag_gain}),
        _common.Claim(f"{multi} has a higher test LL than the {ens}",
                      _common.verdict([g > 0 for g in multi_gain.values()]),
                      {f"ll {multi} − {ens}": multi_gain}),
    ]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    """The command line; every :class:`Config` field is an option (``--swa-lr 0.001``)."""
    parser = argparse.ArgumentParser(
        description="UCI-style regression: SGD, SWA, SWAG and a deep ensemble.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--datasets", nargs="+", default=["diabetes", "boston", "autompg"])
    parser.add_argument("--splits", type=int, default=10, help="random 90/10 splits per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/regression"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: first dataset only, 2 splits, {QUICK}",
    )
    for field in dataclasses.fields(Config):
        default = field.default
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(default), default=default
        )
    args = parser.parse_args(argv)
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    if args.quick:
        args.datasets, args.splits = args.datasets[:1], 2
        settings.update(QUICK)
    return args, Config(**settings)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the experiment; write ``results.json`` and ``results.md`` into ``--out``."""
    args, cfg = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    per_split: dict[str, list[dict[str, Metrics]]] = {d: [] for d in args.datasets}
    jobs = [(d, s) for d in args.datasets for s in range(args.splits)]
    for dataset, split in tqdm(jobs, desc="regression splits"):
        per_split[dataset].append(run_split(cfg, dataset, split, args.seed))
    summary = {dataset: summarize(runs) for dataset, runs in per_split.items()}
    numbers: dict[str, object] = {
        "datasets": args.datasets,
        "splits": args.splits,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "per_split": per_split,
    }
    results = _common.Results(
        "regression", claims(summary), numbers, dataclasses.asdict(cfg), [args.seed]
    )
    table = to_markdown(summary)
    _common.write(args.out, results, table)
    print(table, end="")
    return results.to_json()


if __name__ == "__main__":
    main()
