"""Collector: streaming moments and the deviation ring against float64 two-pass references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from swag import Collector
from tests.reference import flat_params, last_deviations, random_walk, two_pass_moments


# Both collect paths run the oracle tests: eager, and fused by torch.compile (inductor; a C
# compiler is needed on CPU). Compiling takes seconds per distinct graph, so the compiled path
# runs a few cases. torch.compile imports torch.utils.mkldnn, which warns of a deprecation.
def compiled(*values: object) -> Any:
    """A parametrize case ``(*values, True)`` for the compiled path."""
    ignore = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    return pytest.param(*values, True, marks=pytest.mark.filterwarnings(ignore), id="compiled")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # model init only; tests draw their noise from generators
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def run(collector: Collector, model: nn.Module, steps: int, seed: int = 0) -> np.ndarray:
    """Collect ``steps`` random-walk iterates; return them stacked, float64 ``(steps, P)``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        random_walk(model, 1, g)
        collector.collect()
        out.append(flat_params(model))
    return np.stack(out)


@pytest.mark.parametrize(
    ("max_rank", "is_compiled"),
    [(0, False), (1, False), (4, False), compiled(0), compiled(4)],
)
def test_moments_match_two_pass_float64(max_rank: int, is_compiled: bool) -> None:
    model = mlp()
    collector = Collector(model, max_rank=max_rank, compiled=is_compiled)
    iterates = run(collector, model, 25)
    assert collector.compiled is is_compiled  # the compiled path did not fall back to eager
    mean, var = two_pass_moments(iterates)
    post = collector.posterior()
    # float32 statistics of O(1) values: a few ulps of accumulated rounding.
    np.testing.assert_allclose(post.mean.double().numpy(), mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(post.variance.double().numpy(), var, rtol=1e-5, atol=1e-7)
    assert collector.n == 25 and collector.rank == min(25, max_rank)


def test_welford_survives_cancellation_where_naive_formula_fails() -> None:
    # |θ| ~ 1e3 with σ ~ 1e-3 in float32: E[θ²] − E[θ]² loses every significant digit.
    g = torch.Generator().manual_seed(0)
    base = 1000.0 + torch.rand(64, generator=g, dtype=torch.float64) * 50
    iterates = (base + 1e-3 * torch.randn(200, 64, generator=g, dtype=torch.float64)).float()
    model = nn.Linear(64, 1, bias=False)
    collector = Collector(model, max_rank=0)
    sq_mean = torch.zeros(64)
    for i, theta in enumerate(iterates):
        model.weight.data.copy_(theta.view(1, 64))
        collector.collect()
        sq_mean.lerp_(theta.square(), 1.0 / (i + 1))  # what swa_gaussian accumulates
    _, var = two_pass_moments(iterates.double().numpy())
    ours = collector.posterior().variance.double().numpy()
    naive = (sq_mean - iterates.mean(0).square()).double().numpy()
    ours_err = np.abs(ours - var) / var
    naive_err = np.abs(naive - var) / var
    # Offsets θ − θ_1 are ~1e-3, where float32 resolves ~1e-10: the variance comes out to
    # ~1e-6 relative (1e-3 leaves room). A plain float32 running mean of θ would stall at n ~ 30
    # here (increments σ/n below half an ulp of 1e3) and be off by ~0.5 σ: 30% error in places.
    # The naive formula is off by more than 100%.
    assert ours_err.max() < 1e-3
    assert np.median(naive_err) > 1.0


@pytest.mark.parametrize(
    ("steps", "is_compiled"),
    [(3, False), (5, False), (23, False), compiled(23)],  # n < K, n = K, n >> K
)
def test_ring_holds_last_k_deviations_in_order(steps: int, is_compiled: bool) -> None:
    model = mlp()
    collector = Collector(model, max_rank=5, compiled=is_compiled)
    iterates = run(collector, model, steps)
    assert collector.compiled is is_compiled
    expected = last_deviations(iterates, 5)
    post = collector.posterior()
    assert post.deviations.shape == (min(steps, 5), iterates.shape[1])
    np.testing.assert_allclose(post.deviations.double().numpy(), expected, atol=1e-6)
    # The raw ring: iterate i lives in row (i - 1) % K.
    for i in range(max(1, steps - 4), steps + 1):
        row = collector.deviations[(i - 1) % 5].double().numpy()
        np.testing.assert_allclose(row, expected[i - steps - 1], atol=1e-6)


def test_swa_mean_equals_averaged_model() -> None:
    model = mlp()
    averaged = AveragedModel(model)
    collector = Collector(model, max_rank=3)
    g = torch.Generator().manual_seed(1)
    for _ in range(17):
        random_walk(model, 1, g)
        averaged.update_parameters(model)
        collector.collect()
    swa = collector.posterior().to_model(model)
    for (name, ours), theirs in zip(
        swa.named_parameters(), averaged.module.parameters(), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-7, msg=name)


def test_float64_statistics_are_exact_to_double_precision() -> None:
    model = mlp().double()
    collector = Collector(model, max_rank=4, dtype=torch.float64)
    iterates = run(collector, model, 12)
    mean, var = two_pass_moments(iterates)
    post = collector.posterior()
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(post.variance.numpy(), var, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(post.deviations.numpy(), last_deviations(iterates, 4), atol=1e-13)


def test_chunked_scratch_matches_in_place_ring_and_two_pass() -> None:
    # K = 0 works through a scratch chunk: P = 360,600 spans two 2^18-entry chunks, with the
    # weight split across the border. K = 2 works in place, in one pass.
    model = nn.Linear(600, 600)
    chunked, in_place = Collector(model, max_rank=0), Collector(model, max_rank=2)
    assert len(chunked._chunks) == 2 and len(in_place._chunks) == 1
    g = torch.Generator().manual_seed(0)
    iterates = []
    for _ in range(4):
        random_walk(model, 1, g)
        chunked.collect()
        in_place.collect()
        iterates.append(flat_params(model))
    for name in ("shift", "shifted_mean", "m2"):
        assert torch.equal(getattr(chunked, name), getattr(in_place, name)), name
    mean, var = two_pass_moments(np.stack(iterates))
    post = chunked.posterior()
    np.testing.assert_allclose(post.mean.double().numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(post.variance.double().numpy(), var, rtol=1e-4, atol=1e-8)


def test_bf16_deviations_stay_close() -> None:
    model = mlp()
    exact = Collector(model, max_rank=4)
    half = Collector(model, max_rank=4, deviation_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    for _ in range(9):
        random_walk(model, 1, g)
        exact.collect()
        half.collect()
    assert half.deviations.dtype == torch.bfloat16
    assert torch.equal(exact.mean, half.mean)
    # bfloat16 keeps 8 significant bits: relative error <= 2^-8.
    torch.testing.assert_close(half.deviations.float(), exact.deviations, rtol=2**-8, atol=1e-6)


def test_bf16_model_collected_in_float32() -> None:
    model = mlp().to(torch.bfloat16)
    collector = Collector(model, max_rank=2)
    iterates = run(collector, model, 6)
    mean, _ = two_pass_moments(iterates)
    assert collector.mean.dtype == torch.float32
    np.testing.assert_allclose(collector.mean.double().numpy(), mean, atol=1e-6)


def test_param_subset_by_prefix_and_predicate() -> None:
    model = mlp()
    last = Collector(model, params="2")
    assert last.layout.names == ("2.weight", "2.bias") and last.layout.size == 18
    weights = Collector(model, params=lambda name, p: name.endswith("weight"))
    assert weights.layout.names == ("0.weight", "2.weight")
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in Collector(model).layout.names


def test_buffers_keep_their_storage_over_many_collects() -> None:
    model = mlp()
    for k in (0, 5):
        collector = Collector(model, max_rank=k)
        ptrs = [b.data_ptr() for b in collector.buffers()]
        for _ in range(1000):
            collector.collect()
        assert [b.data_ptr() for b in collector.buffers()] == ptrs
        assert collector.n == 1000


def test_collect_from_another_model_of_same_architecture() -> None:
    a, b = mlp(0), mlp(1)
    collector = Collector(a, max_rank=2)
    collector.collect(b)
    np.testing.assert_allclose(collector.mean.double().numpy(), flat_params(b), atol=0)


def test_collect_on_device(device: torch.device) -> None:
    model = mlp().to(device)
    collector = Collector(model, max_rank=3)
    assert collector.mean.device.type == device.type
    collector.collect()
    assert collector.posterior().sample(2).device.type == device.type


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "exc"), [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)]
)
def test_bad_max_rank(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="max_rank must be an int >= 0") as err:
        Collector(mlp(), max_rank=bad)  # type: ignore[arg-type]
    assert type(err.value) is exc


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype"):
        Collector(mlp(), dtype=torch.int32)
    with pytest.raises(TypeError, match=r"deviation_dtype must be a torch\.dtype"):
        Collector(mlp(), deviation_dtype="float32")  # type: ignore[arg-type]


def test_empty_selection_names_available_parameters() -> None:
    with pytest.raises(
        ValueError, match=r"selected no parameters; available names include: 0\.weight"
    ):
        Collector(mlp(), params="decoder")


def test_non_float_parameter_rejected() -> None:
    model = mlp()
    model.register_parameter("count", nn.Parameter(torch.zeros(2, dtype=torch.int64), False))
    with pytest.raises(ValueError, match=r"\['count'\] are not floating point"):
        Collector(model, params=["count", "0"])


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_iterate_raises_and_leaves_state_untouched(poison: float) -> None:
    model = mlp()
    collector = Collector(model, max_rank=2)
    run(collector, model, 3)
    before = {k: v.clone() for k, v in collector.state_dict().items() if k != "_extra_state"}
    with torch.no_grad():
        model[2].bias[1] = poison
    with pytest.raises(
        ValueError, match=r"iterate 4 has NaN or inf in \['2.bias'\]; nothing was recorded"
    ):
        collector.collect()
    assert collector.n == 3
    for k, v in before.items():
        assert torch.equal(getattr(collector, k), v), k


def test_changed_model_raises_with_the_difference() -> None:
    model = mlp()
    collector = Collector(model, max_rank=2)
    model[2] = nn.Linear(5, 4)
    with pytest.raises(ValueError, match=r"2\.weight: shape \(4, 5\), expected \(3, 5\)"):
        collector.collect()
    with pytest.raises(ValueError, match=r"2\.weight: missing from the model"):
        collector.collect(nn.Sequential(nn.Linear(6, 5)))
    with pytest.raises(ValueError, match=r"dtype torch\.float64, expected torch\.float32"):
        collector.collect(mlp().double())


def test_posterior_before_collect() -> None:
    with pytest.raises(RuntimeError, match="call collect"):
        Collector(mlp()).posterior()
