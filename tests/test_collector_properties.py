"""Property-based tests of the collector (hypothesis): generated models against float64 oracles.

Each example draws a model (parameter shapes, each parameter's dtype among float32, float64 and
bfloat16, an optional tied parameter), a selection, the statistics' and the ring's dtypes, K,
the number of iterates n and the chunk size the collector works in, then checks the statistics
against the two-pass float64 oracle of ``tests/reference.py``, that chunking changes no bit, and
that resuming at a random point (``state_dict`` or a file) is bit-identical. Examples are
derandomised (the same cases on every run) and bounded so that the file runs in seconds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from swag import Collector
from tests.reference import last_deviations, two_pass_moments

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None)
PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class Bag(nn.Module):
    """Parameters ``p0, p1, ...`` of the given shapes and dtypes; ``tied`` aliases one of them."""

    def __init__(
        self, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype], tie: int | None
    ) -> None:
        super().__init__()
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            self.register_parameter(f"p{i}", nn.Parameter(torch.zeros(shape, dtype=dtype)))
        if tie is not None:
            self.register_parameter("tied", getattr(self, f"p{tie}"))


@dataclass
class Case:
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    tie: int | None
    params: list[str] | None
    dtype: torch.dtype
    deviation_dtype: torch.dtype
    max_rank: int
    steps: int
    chunk: int
    seed: int

    def model(self) -> Bag:
        return Bag(self.shapes, self.dtypes, self.tie)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    count = draw(st.integers(1, 4))
    shapes = [
        tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))) for _ in range(count)
    ]
    dtypes = [draw(st.sampled_from(PARAM_DTYPES)) for _ in range(count)]
    tie = draw(st.one_of(st.none(), st.integers(0, count - 1)))
    names = [f"p{i}" for i in range(count)] + ([] if tie is None else ["tied"])
    params = draw(st.one_of(st.none(), st.lists(st.sampled_from(names), min_size=1, unique=True)))
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    deviation_dtype = draw(st.sampled_from((dtype, torch.bfloat16)))
    size = sum(int(np.prod(s)) for s in shapes)
    return Case(
        shapes,
        dtypes,
        tie,
        params,
        dtype,
        deviation_dtype,
        max_rank=draw(st.integers(0, 4)),
        steps=draw(st.integers(1, 8)),
        chunk=draw(st.integers(1, size + 1)),  # beyond P: one chunk
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make(case: Case, model: nn.Module, chunk: int | None = None) -> Collector:
    """A collector for ``case``; with ``chunk``, it works in chunks of that many entries."""
    kw: dict[str, Any] = {
        "params": case.params,
        "dtype": case.dtype,
        "deviation_dtype": case.deviation_dtype,
    }
    if chunk is None:
        return Collector(model, case.max_rank, **kw)
    with mock.patch.multiple("swag.core._params", _CHUNK=chunk, _WHOLE_MAX=0):
        return Collector(model, case.max_rank, **kw)


def iterate(model: nn.Module, g: torch.Generator) -> None:
    """One step of a random walk of every (distinct) parameter, in its own dtype."""
    with torch.no_grad():
        for p in model.parameters():  # a tied parameter comes once
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def covered(collector: Collector, model: nn.Module) -> np.ndarray:
    """The covered parameters as the collector orders them, in float64."""
    named = dict(model.named_parameters(remove_duplicate=False))
    flat = [named[n].detach().double().reshape(-1) for n in collector.layout.names]
    return torch.cat(flat).numpy()


def state(collector: Collector) -> dict[str, Tensor]:
    return {k: v for k, v in collector.state_dict().items() if isinstance(v, Tensor)}


def bit_equal(a: Collector, b: Collector) -> bool:
    sa, sb = state(a), state(b)
    return a.n == b.n and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@SETTINGS
@given(cases())
def test_statistics_match_float64_oracle_and_chunking_changes_no_bit(case: Case) -> None:
    model = case.model()
    g = torch.Generator().manual_seed(case.seed)
    iterate(model, g)  # a random start
    whole, chunked = make(case, model), make(case, model, case.chunk)
    names = set(case.params or [])
    if names & {"tied", f"p{case.tie}"} and case.tie is not None:
        assert f"p{case.tie}" in whole.layout.names  # a tied tensor under its first name
    assert len(set(whole.layout.names)) == len(whole.layout.names)  # each tensor once
    rows = []
    for _ in range(case.steps):
        iterate(model, g)
        whole.collect()
        chunked.collect()
        rows.append(covered(whole, model))
    assert bit_equal(whole, chunked)
    x = np.stack(rows)
    mean, var = two_pass_moments(x)
    post = whole.posterior(min_variance=0.0)
    scale = 1 + np.abs(x).max()
    if case.dtype == torch.float64:
        # float64 statistics of float64 iterates: rounding of a few operations per entry
        tol = {"atol": 1e-12 * scale, "rtol": 1e-12}
    else:
        # float32: ulp(|θ|) ≈ 1.2e-7 |θ| per rounding, a handful of roundings per iterate
        tol = {"atol": 2e-6 * scale, "rtol": 1e-5}
    np.testing.assert_allclose(post.mean.double().numpy(), mean, **tol)
    np.testing.assert_allclose(post.variance.double().numpy(), var, rtol=1e-4, atol=tol["atol"])
    dev = last_deviations(x, case.max_rank)
    if case.deviation_dtype == torch.bfloat16:
        tol = {"atol": tol["atol"], "rtol": 2**-8}  # bfloat16 keeps 8 significant bits
    np.testing.assert_allclose(post.deviations.double().numpy(), dev, **tol)


@SETTINGS
@given(cases(), st.integers(1, 8), st.booleans())
def test_resume_at_any_point_is_bit_identical(case: Case, stop: int, via_file: bool) -> None:
    stop = min(stop, case.steps)
    model = case.model()
    g = torch.Generator().manual_seed(case.seed)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    uninterrupted = make(case, model, case.chunk)
    for _ in range(case.steps):
        iterate(model, g)
        uninterrupted.collect()
    model.load_state_dict(start)
    g.manual_seed(case.seed)
    first = make(case, model, case.chunk)
    for _ in range(stop):
        iterate(model, g)
        first.collect()
    if via_file:
        with tempfile.TemporaryDirectory() as folder:
            first.save(Path(folder) / "c.safetensors")
            resumed = Collector.load(Path(folder) / "c.safetensors", model)
    else:
        resumed = make(case, model)  # chunked otherwise: chunking changes no bit
        resumed.load_state_dict(first.state_dict())
    del first
    for _ in range(case.steps - stop):
        iterate(model, g)
        resumed.collect()
    assert bit_equal(resumed, uninterrupted)
    a, b = resumed.posterior(), uninterrupted.posterior()
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@SETTINGS
@given(cases(), st.integers(0, 7), st.data())
def test_poisoned_iterate_refused_and_run_continues_bit_identically(
    case: Case, at: int, data: st.DataObject
) -> None:
    at = min(at, case.steps - 1)  # how many clean iterates come before the poisoned one
    model = case.model()
    g = torch.Generator().manual_seed(case.seed)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    clean = make(case, model, case.chunk)
    for _ in range(case.steps):
        iterate(model, g)
        clean.collect()
    model.load_state_dict(start)
    g.manual_seed(case.seed)
    poisoned = make(case, model, case.chunk)
    index = data.draw(st.integers(0, len(poisoned.layout.names) - 1), label="parameter")
    param = dict(model.named_parameters())[poisoned.layout.names[index]]
    values = [float("nan"), float("inf"), -float("inf")]
    if param.dtype == torch.float64 and case.dtype == torch.float32:
        values.append(1e39)  # finite in float64, inf in the float32 statistics
    value = data.draw(st.sampled_from(values), label="value")
    entry = data.draw(st.integers(0, param.numel() - 1), label="entry")
    for i in range(case.steps):
        iterate(model, g)
        if i == at:
            before = {k: v.clone() for k, v in state(poisoned).items()}
            kept = param.detach().reshape(-1)[entry].item()
            with torch.no_grad():
                param.view(-1)[entry] = value
            try:
                poisoned.collect()
                raise AssertionError(f"{value} at iterate {i + 1} was recorded")
            except ValueError as exc:
                assert "nothing was recorded" in str(exc)
            after = state(poisoned)
            assert poisoned.n == i and all(torch.equal(before[k], after[k]) for k in before)
            with torch.no_grad():
                param.view(-1)[entry] = kept
        poisoned.collect()
    assert bit_equal(poisoned, clean)


# Error bounds promised in docs/concepts.md ("Error bounds per dtype"), against the float64
# two-pass moments of the iterates the model actually held (after rounding to its dtype): σ²
# within RTOL_VAR relative, the mean within a few units in the last place of the statistics'
# dtype at |θ|. They hold for every parameter dtype at any |θ|/σ up to 1e8, because θ − θ_1 is
# taken in the finer of the two dtypes before it is cast.
RTOL_VAR = {torch.float32: 1e-4, torch.float64: 1e-10}


@dataclass
class MagnitudeCase:
    param_dtype: torch.dtype
    dtype: torch.dtype
    exponent: int
    size: int
    steps: int
    seed: int


@st.composite
def magnitude_cases(draw: st.DrawFn) -> MagnitudeCase:
    return MagnitudeCase(
        param_dtype=draw(st.sampled_from(PARAM_DTYPES)),
        dtype=draw(st.sampled_from((torch.float32, torch.float64))),
        exponent=draw(st.integers(0, 8)),
        size=draw(st.integers(1, 8)),
        steps=draw(st.integers(2, 12)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(magnitude_cases())
def test_error_bound_per_dtype_holds_across_magnitudes(case: MagnitudeCase) -> None:
    """Parameter dtype × statistics dtype × |θ|/σ = 10⁰..10⁸ against float64 (σ = 1)."""
    g = torch.Generator().manual_seed(case.seed)
    model = Bag([(case.size,)], [case.param_dtype], None)
    sign = torch.where(torch.rand(case.size, generator=g) < 0.5, -1.0, 1.0).double()
    centre = sign * 10.0**case.exponent
    collector = Collector(model, max_rank=2, dtype=case.dtype)
    rows = []
    with torch.no_grad():
        for _ in range(case.steps):
            theta = centre + torch.randn(case.size, generator=g, dtype=torch.float64)
            model.p0.copy_(theta.to(case.param_dtype))
            collector.collect()
            rows.append(model.p0.double().numpy().copy())
    x = np.stack(rows)
    mean, var = two_pass_moments(x)
    post = collector.posterior(min_variance=0.0)
    # σ² relative to the truth; a parameter that rounding kept constant must give exactly 0
    np.testing.assert_allclose(
        post.variance.double().numpy(), var, rtol=RTOL_VAR[case.dtype], atol=0.0
    )
    eps = torch.finfo(case.dtype).eps
    np.testing.assert_allclose(post.mean.double().numpy(), mean, rtol=2 * eps, atol=8 * eps)
