"""The core at its edges (issue 22): eight classes of realistic input that used to go wrong.

1. half-precision statistics (refused; a bfloat16 ring stays available), 2. float64 parameters
into float32 statistics (the shift is taken in float64), 3. every torch norm layer with running
statistics needs a refresh, 4. Gaussian heads whose mean and variance broadcast, 5. loaders
without ``len()``, 6. lazy and pruned modules, 7. a ``.data`` swapped to other strides,
8. fit_scale's diagnostics and arguments. Numbers are checked against float64 numpy or torch
references with the tolerance stated next to each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

import swag
from swag import Collector, ParamLayout, SWAGPosterior, fit_scale, predict
from swag.core.point import PointPosterior
from swag.evaluation.bn import has_batchnorm, update_bn
from swag.persistence import _io
from tests.reference import two_pass_moments

# -- 1. half-precision statistics ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_statistics_refused_with_the_ring_as_the_fix(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match=r"float32.*deviation_dtype=torch\.bfloat16"):
        Collector(nn.Linear(3, 2), max_rank=2, dtype=dtype)


def test_bfloat16_ring_with_float32_statistics_holds_over_thousands_of_collects() -> None:
    """The recommended set-up: σ² as float32 Welford (rtol 1e-4 against two-pass float64), and
    each stored deviation within bfloat16's half-ulp, 2⁻⁸ relative (plus float32 rounding)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(8, 4)
    collector = Collector(model, max_rank=3, deviation_dtype=torch.bfloat16)
    rows = []
    with torch.no_grad():
        for _ in range(3000):
            model.weight.copy_(1.0 + 0.01 * torch.randn(4, 8, generator=g))
            model.bias.copy_(-2.0 + 0.01 * torch.randn(4, generator=g))
            collector.collect()
            rows.append(torch.cat([model.weight.reshape(-1), model.bias]).double().numpy())
    x = np.stack(rows)
    _, var = two_pass_moments(x)
    post = collector.posterior(min_variance=0.0)
    np.testing.assert_allclose(post.variance.double().numpy(), var, rtol=1e-4)
    dev = x[-1] - x.mean(axis=0)
    np.testing.assert_allclose(
        post.deviations[-1].double().numpy(), dev, rtol=2**-8, atol=1e-5 * np.sqrt(var).max()
    )


def test_old_file_with_bfloat16_statistics_refused_on_load_with_the_hint(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    collector = Collector(model, max_rank=2)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(0.1)
        collector.collect()
    path = tmp_path / "c.safetensors"
    collector.save(path)
    tensors, meta = _io.load_file(path, "collector")
    for name in ("shift", "shifted_mean", "m2", "deviations"):
        tensors[name] = tensors[name].bfloat16()
    meta = {**meta, "dtype": "bfloat16", "deviation_dtype": "bfloat16"}
    old = tmp_path / "old.safetensors"
    _io.save_file(old, "collector", tensors, meta)
    with pytest.raises(ValueError, match=r"old\.safetensors.*deviation_dtype=torch\.bfloat16"):
        Collector.load(old, model)


# -- 2. float64 parameters, float32 statistics ----------------------------------------------


@pytest.mark.parametrize("ratio", [1e2, 1e4, 1e6, 1e7, 1e8])
def test_float64_parameters_keep_their_spread_in_float32_statistics(ratio: float) -> None:
    """|θ|/σ from 1e2 to 1e8: σ² within 1e-4 relative of float64 two-pass (before the fix the
    error was 47% at 1e7 and σ collapsed to ~0 at 1e8)."""
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(4, 4).double()
    collector = Collector(model, max_rank=2)  # float32 statistics
    rows = []
    with torch.no_grad():
        for _ in range(40):
            for p in model.parameters():
                p.copy_(ratio + torch.randn(p.shape, generator=g, dtype=torch.float64))
            collector.collect()
            rows.append(torch.cat([p.reshape(-1) for p in model.parameters()]).numpy())
    mean, var = two_pass_moments(np.stack(rows))
    post = collector.posterior(min_variance=0.0)
    np.testing.assert_allclose(post.variance.double().numpy(), var, rtol=1e-4)
    # the mean itself can only be as fine as float32 at |θ|: half an ulp plus rounding
    np.testing.assert_allclose(post.mean.double().numpy(), mean, rtol=2**-23)


# -- 3. every norm layer with running statistics --------------------------------------------

NEEDS_REFRESH = {
    "BatchNorm1d": lambda: nn.BatchNorm1d(3),
    "BatchNorm2d": lambda: nn.BatchNorm2d(3),
    "BatchNorm3d": lambda: nn.BatchNorm3d(3),
    "LazyBatchNorm1d": lambda: nn.LazyBatchNorm1d(),
    "SyncBatchNorm": lambda: nn.SyncBatchNorm(3),
    "InstanceNorm1d": lambda: nn.InstanceNorm1d(3, track_running_stats=True),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
    "InstanceNorm3d": lambda: nn.InstanceNorm3d(3, track_running_stats=True),
}
NO_REFRESH = {
    "BatchNorm2d untracked": lambda: nn.BatchNorm2d(3, track_running_stats=False),
    "InstanceNorm2d untracked": lambda: nn.InstanceNorm2d(3),
    "GroupNorm": lambda: nn.GroupNorm(1, 3),
    "LayerNorm": lambda: nn.LayerNorm(3),
}


@pytest.mark.parametrize("name", [*NEEDS_REFRESH, *NO_REFRESH])
def test_one_helper_says_which_norm_layers_need_a_refresh(name: str) -> None:
    layer = {**NEEDS_REFRESH, **NO_REFRESH}[name]()
    assert has_batchnorm(nn.Sequential(nn.Identity(), layer)) is (name in NEEDS_REFRESH)


@pytest.mark.slow  # importing Lightning takes ~25 s on the shared runner
def test_lightning_uses_the_same_helper() -> None:
    pytest.importorskip("lightning")
    from swag.integrations import _lightning_checks

    assert _lightning_checks.has_batchnorm is has_batchnorm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_instance_norm_refresh_is_the_average_of_the_batches(momentum: float | None) -> None:
    """Reference: each batch's statistics from a fresh layer with momentum 1, averaged; the
    layer's own momentum (None included, which InstanceNorm reads as "no update") is restored."""
    g = torch.Generator().manual_seed(2)
    norm = nn.InstanceNorm2d(3, momentum=momentum, track_running_stats=True)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), norm)
    batches = [torch.randn(4, 2, 6, 6, generator=g) + i for i in range(3)]
    means, variances = [], []
    with torch.no_grad():
        for x in batches:
            fresh = nn.InstanceNorm2d(3, momentum=1.0, track_running_stats=True)
            fresh(model[0](x))
            means.append(fresh.running_mean)
            variances.append(fresh.running_var)
    update_bn(batches, model)
    assert norm.momentum == momentum and model.training  # both as they were
    torch.testing.assert_close(norm.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack(variances).mean(0))


def test_predict_asks_for_bn_loader_with_tracked_instance_norm() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.InstanceNorm2d(3, track_running_stats=True))
    model.append(nn.Flatten())
    post = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match="BNRefresh"):
        predict(post, model, [torch.randn(2, 2, 5, 5)])


# -- 4. Gaussian heads whose shapes broadcast -----------------------------------------------


class Head(nn.Module):
    def __init__(self, mean_shape: tuple[int, ...], var_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.shapes = mean_shape, var_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.lin(x)
        return out.reshape(self.shapes[0]), out.exp().reshape(self.shapes[1])


@pytest.mark.parametrize("shapes", [((8,), (8, 1)), ((8, 1), (8,))])
def test_gaussian_head_with_broadcasting_shapes_refused(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    model = Head(*shapes)
    post = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match=r"shape \(8,\).*shape \(8, 1\)|\(8, 1\).*\(8,\)"):
        predict(post, model, [torch.randn(8, 3)], head=swag.GaussianRegression())


# -- 5. loaders without len() ----------------------------------------------------------------


class Stream(IterableDataset[tuple[Tensor, Tensor]]):
    """A fixed-order stream of (x, y) examples, without ``__len__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(zip(self.x, self.y, strict=True))


def _linear_swag(g: torch.Generator) -> tuple[nn.Module, SWAGPosterior]:
    model = nn.Linear(3, 4)
    layout = ParamLayout.from_model(model)
    mean, std = torch.randn(layout.size, generator=g), 0.3 * torch.ones(layout.size)
    return model, SWAGPosterior(mean, std, torch.randn(2, layout.size, generator=g), layout, n=5)


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_predict_and_fit_scale_accept_a_loader_without_len() -> None:
    g = torch.Generator().manual_seed(3)
    model, post = _linear_swag(g)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 4, (12,), generator=g)
    stream = DataLoader(Stream(x, y), batch_size=5)
    listed = list(DataLoader(Stream(x, y), batch_size=5))
    seed = torch.Generator().manual_seed
    got = predict(post, model, stream, num_samples=3, generator=seed(0))
    want = predict(post, model, listed, num_samples=3, generator=seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    kw = {"num_samples": 2, "tol": 0.5, "generator": seed(1)}
    assert fit_scale(post, model, stream, **kw) == fit_scale(post, model, listed, **kw)  # type: ignore[arg-type]


def test_bn_loader_without_len_is_accepted() -> None:
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    post = PointPosterior.from_model(model)
    x, y = torch.randn(12, 3, generator=g), torch.zeros(12, dtype=torch.long)
    stream = DataLoader(Stream(x, y), batch_size=6)
    got = predict(post, model, [x], options=swag.PredictOptions(bn=swag.BNRefresh(stream)))
    want = predict(post, model, [x], options=swag.PredictOptions(bn=swag.BNRefresh(list(stream))))
    torch.testing.assert_close(got, want)


# -- 6. lazy and pruned modules ---------------------------------------------------------------


def test_uninitialised_lazy_module_named_with_the_fix() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"'1 \(LazyLinear\)'.*forward pass"):
        Collector(model)
    model(torch.randn(2, 3))  # after one forward pass it is an ordinary model
    assert Collector(model).layout.size == 4 * 3 + 4 + 2 * 4 + 2


def _pruned(g: torch.Generator) -> nn.Sequential:
    torch.manual_seed(int(torch.randint(2**31, (), generator=g)))
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    model(torch.randn(6, 4, generator=g)).sum().backward()  # `weight` is now a non-leaf
    return model


def test_pruned_model_after_backward_predicts_and_copies() -> None:
    """Against the pruned model itself: a point posterior's prediction is its softmax, and
    ``to_model`` gives a copy whose outputs match; the original is untouched."""
    g = torch.Generator().manual_seed(5)
    model = _pruned(g)
    x = torch.randn(7, 4, generator=g)
    post = PointPosterior.from_model(model)
    got = predict(post, model, [x])
    copy = post.to_model(model)
    with torch.no_grad():  # a forward here would recompute `weight` as a leaf: only after
        want = model(x)
        torch.testing.assert_close(copy(x), want)
    torch.testing.assert_close(got, want.softmax(-1))
    copy[0].weight_orig.data.zero_()  # the copy owns its parameters
    assert model[0].weight_orig.abs().sum() > 0


class Recorded(SWAGPosterior):
    """A SWAG posterior that keeps a copy of every draw it hands out."""

    draws: list[Tensor]

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        theta = super().sample(*args, **kwargs)
        self.draws.append(theta.clone())
        return theta


def test_pruned_model_swag_predictions_follow_the_mask() -> None:
    """SWAG draws of ``weight_orig`` are masked in the working copy: entries that prune removed
    have no effect. Reference: each recorded draw applied by hand to a plain, unpruned net."""
    g = torch.Generator().manual_seed(6)
    model = _pruned(g)
    layout = ParamLayout.from_model(model)
    mean = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    post = Recorded(mean, 0.2 * torch.ones(layout.size), torch.zeros(0, layout.size), layout, n=3)
    post.draws = []
    x = torch.randn(5, 4, generator=g)
    got = predict(post, model, [x], num_samples=3, generator=torch.Generator().manual_seed(7))
    assert len(post.draws) == 3
    plain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = model[0].weight_mask
    probs = []
    for theta in post.draws:
        values = dict(zip(layout.names, layout.split(theta), strict=True))
        with torch.no_grad():
            plain[0].weight.copy_(values["0.weight_orig"] * mask)
            plain[0].bias.copy_(values["0.bias"])
            plain[2].weight.copy_(values["2.weight"])
            plain[2].bias.copy_(values["2.bias"])
            probs.append(plain(x).softmax(-1))
    torch.testing.assert_close(got, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)


# -- 7. .data swapped to other strides ------------------------------------------------------


def test_transposed_data_on_the_same_storage_is_read_afresh() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.arange(9.0).view(3, 3))
    collector = Collector(model, max_rank=0)
    collector.collect()
    rows = [model.weight.detach().reshape(-1).double().clone()]
    ptr = model.weight.data_ptr()
    model.weight.data = model.weight.data.t()  # same storage and shape, other strides
    assert model.weight.data_ptr() == ptr
    collector.collect()
    rows.append(model.weight.detach().reshape(-1).double().clone())
    want = torch.stack(rows).mean(0)  # float64 reference of the values the model holds
    torch.testing.assert_close(collector.mean.double(), want, rtol=0, atol=1e-6)


# -- 8. fit_scale's diagnostics and arguments ------------------------------------------------


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
