"""fit_scale: recovering a posterior width we set, agreeing with a brute-force grid, bad input.

The known-optimum test draws each label with its own weights from the posterior at scale 0.8,
so the model average at 0.8 is the true predictive distribution and minimises the expected
NLL. With 8,000 labels and 64 draws the fitted scale is still noisy: over 5 other seeds per
posterior kind (15 fits, measured while writing this test) |log(fitted / 0.8)| was at most 0.37
(mean 0.15), so the tolerance TOL_LOG = 0.5 (a factor 1.65) is that worst case plus a margin.
This test checks that the objective points at the right width; the search's own precision is
checked against a brute-force grid on the same common random numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import swag
from swag import Collector, MultiSWAG, ParamLayout, SWAGPosterior, fit_scale, metrics, predict
from swag.core.posterior import Posterior
from tests.test_predict import _linear_swag

TOL_LOG = 0.5


def linear_posterior(g: torch.Generator, rank: int) -> tuple[nn.Linear, SWAGPosterior]:
    """A 2-feature, 3-class softmax regression and a Gaussian over its 6 weights."""
    model = nn.Linear(2, 3, bias=False)
    mean = 1.5 * torch.randn(6, generator=g)
    std = 0.5 + torch.rand(6, generator=g)
    deviations = torch.randn(rank, 6, generator=g)
    return model, SWAGPosterior(mean, std, deviations, ParamLayout.from_model(model), n=100)


def labels_from(post: Posterior, scale: float, diagonal: bool, x: torch.Tensor, g: torch.Generator):
    """y_n ~ softmax(W_n x_n) with a fresh W_n ~ posterior(scale) per example: the true
    predictive is then exactly the posterior's model average at ``scale``."""
    w = (post.diagonal() if diagonal else post).sample((len(x),), scale=scale, generator=g)
    w = w.view(-1, 3, 2)
    logits = torch.einsum("ncd,nd->nc", w, x)
    return torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)


@pytest.mark.parametrize("kind", ["swag", "swag-diag", "multiswag"])
def test_recovers_the_scale_the_labels_were_drawn_with(kind: str) -> None:
    g = torch.Generator().manual_seed({"swag": 0, "swag-diag": 1, "multiswag": 2}[kind])
    model, post = linear_posterior(g, rank=0 if kind == "multiswag" else 4)
    if kind == "multiswag":
        post = MultiSWAG([post, linear_posterior(g, rank=0)[1]])  # type: ignore[assignment]
    diagonal = kind == "swag-diag"
    true_scale = 0.8
    x = 2.0 * torch.randn(8000, 2, generator=g)
    y = labels_from(post, true_scale, diagonal, x, g)
    fitted = fit_scale(
        post.diagonal() if diagonal else post, model, [(x, y)], num_samples=64, tol=0.1,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    # TOL_LOG: see the module docstring for how the tolerance was measured
    assert abs(math.log(fitted / true_scale)) < TOL_LOG, fitted


def bma_nll(post: Posterior, model: nn.Module, val: list, bn: list, scale: float) -> float:
    probs = predict(
        post,
        model,
        val,
        num_samples=6,
        scale=scale,
        generator=torch.Generator().manual_seed(3),
        options=swag.PredictOptions(bn=swag.BNRefresh(bn)),
    )
    return metrics.nll(probs, torch.cat([b[1] for b in val]))


def test_agrees_with_a_brute_force_grid_with_batchnorm() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(600, 5, generator=g)
    y = (x[:, :2] @ torch.tensor([[1.0, -1.0], [1.0, 1.0]]) > 0).long() @ torch.tensor([1, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    collector = Collector(model, max_rank=5)
    for step in range(120):
        idx = torch.randint(0, 400, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 60 and step % 5 == 0:
            collector.collect()
    post = collector.posterior()
    val = [(x[400:500], y[400:500]), (x[500:], y[500:])]
    bn = [x[:200], x[200:400]]
    fitted = fit_scale(
        post,
        model,
        val,
        num_samples=6,
        bounds=(0.05, 20.0),
        tol=0.02,
        generator=torch.Generator().manual_seed(3),
        options=swag.PredictOptions(bn=swag.BNRefresh(bn)),
    )
    grid = [math.exp(u) for u in torch.linspace(math.log(0.05), math.log(20.0), 41).tolist()]
    values = [bma_nll(post, model, val, bn, s) for s in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    assert 0 < best < len(grid) - 1, "the test problem must have an interior optimum"
    # the same common random numbers as the grid: the search finds a point at least as good as
    # the grid's best up to the curvature over half a grid step (0.075 in log-scale)
    assert bma_nll(post, model, val, bn, fitted) <= values[best] + 1e-3
    assert abs(math.log(fitted / grid[best])) <= math.log(grid[1] / grid[0])


def test_leaves_the_generator_alone_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    model, post = linear_posterior(g, rank=3)
    x = torch.randn(500, 2, generator=g)
    val = [(x, labels_from(post, 0.5, False, x, g))]
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    first = fit_scale(post, model, val, num_samples=10, generator=gen)
    assert torch.equal(gen.get_state(), state)
    assert fit_scale(post, model, val, num_samples=10, generator=gen) == first


def test_warns_when_the_optimum_is_outside_the_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    model, post = linear_posterior(g, rank=3)
    x = 2.0 * torch.randn(5000, 2, generator=g)
    val = [(x, labels_from(post, 0.05, False, x, g))]
    with pytest.warns(RuntimeWarning, match="edge of bounds"):
        fitted = fit_scale(post, model, val, num_samples=50, bounds=(2.0, 4.0))
    assert fitted == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be an int >= 1"),
        ({"num_samples": 4, "bounds": (0.0, 1.0)}, "bounds must satisfy"),
        ({"num_samples": 4, "bounds": (2.0, 1.0)}, "bounds must satisfy"),
        ({"num_samples": 4, "tol": 0.0}, "tol must be > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    model, post = linear_posterior(torch.Generator().manual_seed(0), rank=2)
    val = [(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(ValueError, match=message):
        fit_scale(post, model, val, **kwargs)


def test_batches_without_targets_are_a_clear_error() -> None:
    model, post = linear_posterior(torch.Generator().manual_seed(0), rank=2)
    with pytest.raises(ValueError, match="target_fn="):
        fit_scale(post, model, [torch.randn(8, 2)], num_samples=2)


def _point_data(g: torch.Generator) -> tuple[nn.Module, SWAGPosterior, list[tuple[Tensor, Tensor]]]:
    model = nn.Linear(2, 3)
    layout = ParamLayout.from_model(model)
    mean = torch.randn(layout.size, generator=g)
    zero = SWAGPosterior(mean, torch.zeros(layout.size), torch.zeros(3, layout.size), layout, n=4)
    x, y = torch.randn(10, 2, generator=g), torch.randint(0, 3, (10,), generator=g)
    return model, zero, [(x, y)]


def test_fit_scale_on_a_posterior_without_spread_says_the_objective_is_flat() -> None:
    model, zero, val = _point_data(torch.Generator().manual_seed(8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_scale(zero, model, val, num_samples=3)
    messages = [str(w.message) for w in caught]
    assert any("objective is flat" in m for m in messages), messages
    assert not any("widen bounds" in m and "not help" not in m for m in messages), messages


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_fit_scale_accepts_numpy_integers_as_predict_does() -> None:
    g = torch.Generator().manual_seed(9)
    model, post = _linear_swag(g)
    val = [(torch.randn(10, 3, generator=g), torch.randint(0, 4, (10,), generator=g))]
    kw = {"tol": 0.5, "generator": torch.Generator().manual_seed(0)}
    got = fit_scale(post, model, val, num_samples=np.int64(3), **kw)  # type: ignore[arg-type]
    assert got == fit_scale(post, model, val, num_samples=3, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"val_loader": []}, ValueError, "val_loader is empty"),
        ({"val_loader": iter([])}, ValueError, "val_loader yielded no batch"),
        ({"bounds": (0.1, 1.0, 2.0)}, ValueError, r"bounds must be a pair \(lo, hi\)"),
        ({"bounds": 1.0}, TypeError, r"bounds must be a pair \(lo, hi\)"),
    ],
)
def test_fit_scale_names_an_empty_loader_and_malformed_bounds(
    kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    model, post, val = _point_data(torch.Generator().manual_seed(10))
    args = {"val_loader": val, **kwargs}
    with pytest.raises(exc, match=message):
        fit_scale(post, model, num_samples=2, **args)  # type: ignore[arg-type]
