"""One small example of every posterior kind, shared by the contract, persistence and matrix
tests. Every builder is deterministic (fixed seeds) and takes well under a second on a CPU."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

import swag
from swag.snapshots import Snapshots
from swag.subspace import Subspace, SubspaceLikelihood, SubspacePosterior, elliptical_slice, fit_vi


class Net(nn.Module):
    """A 4 → 5 → 3 classifier; optional BatchNorm (no affine parameters, so every variant has
    the same parameters ``inp.*``, ``out.*``) and dropout in the hidden layer."""

    def __init__(self, dropout: bool = False, batchnorm: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5, affine=False) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(0.3) if dropout else nn.Identity()
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.bn(self.inp(x)))))


def make_model(dropout: bool = False, batchnorm: bool = False) -> Net:
    torch.manual_seed(0)
    return Net(dropout, batchnorm)


def walk(model: nn.Module, target: swag.Collector | Snapshots, seed: int, steps: int = 9) -> None:
    """``steps`` random-walk iterates of ``model``, each collected into ``target``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            target.collect()


@functools.cache
def _collector(seed: int) -> swag.Collector:
    model = make_model()
    collector = swag.Collector(model, max_rank=6)
    walk(model, collector, seed)
    return collector


def swag_posterior(seed: int = 0) -> swag.SWAGPosterior:
    return _collector(seed).posterior()


@functools.cache
def _subspace_posteriors() -> tuple[SubspacePosterior, SubspacePosterior]:
    model = make_model()
    sub = Subspace.pca(_collector(0), 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    lik = SubspaceLikelihood(model, sub, [(x[:15], y[:15]), (x[15:], y[15:])])
    chain = elliptical_slice(lik, 2, 6, generator=g)
    vi = fit_vi(lik, epochs=3, full=True, generator=g)
    return (
        SubspacePosterior.from_ess(sub, chain, temperature=1.0, prior_std=1.0),
        SubspacePosterior.from_vi(sub, vi, temperature=1.0, prior_std=1.0),
    )


def fge() -> swag.MultiSWAG:
    """FGE: a mixture of the points a ``Snapshots`` gathered."""
    model = make_model()
    snaps = Snapshots(model, 4)
    walk(model, snaps, seed=3, steps=4)
    return snaps.posterior()


KINDS: dict[str, Callable[[], swag.Posterior]] = {
    "SWAG": swag_posterior,
    "SWAG-Diag": lambda: swag_posterior().diagonal(),
    "point": lambda: swag.PointPosterior.from_model(make_model()),
    "MultiSWAG of SWAG": lambda: swag.MultiSWAG([swag_posterior(0), swag_posterior(1)]),
    "MultiSWAG of FGE points": fge,
    "MultiSWAG of SWAG + subspace": lambda: swag.MultiSWAG(
        [swag_posterior(1), _subspace_posteriors()[0]]
    ),
    "subspace (ESS)": lambda: _subspace_posteriors()[0],
    "subspace (VI)": lambda: _subspace_posteriors()[1],
}
"""Every single-process posterior kind, by the name the docs table uses."""


def collector_and_model() -> tuple[swag.Collector, nn.Module]:
    model = make_model()
    collector = swag.Collector(model, max_rank=3)
    walk(model, collector, seed=5, steps=4)
    return collector, model


def snapshots_and_model() -> tuple[Snapshots, nn.Module]:
    model = make_model()
    snaps = Snapshots(model, 3)
    walk(model, snaps, seed=6, steps=2)
    return snaps, model


def fixture_objects() -> dict[str, object]:
    """What tests/fixtures holds, by file stem: every kind of file swag.save writes."""
    names = {
        "swag": "SWAG",
        "swag_diag": "SWAG-Diag",
        "point": "point",
        "multiswag": "MultiSWAG of SWAG",
        "fge": "MultiSWAG of FGE points",
        "mixed": "MultiSWAG of SWAG + subspace",
        "subspace_ess": "subspace (ESS)",
        "subspace_vi": "subspace (VI)",
    }
    out: dict[str, object] = {stem: KINDS[kind]() for stem, kind in names.items()}
    out["collector"] = collector_and_model()[0]
    out["snapshots"] = snapshots_and_model()[0]
    return out
