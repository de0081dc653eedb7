"""swag.lowp: the block-floating-point quantiser against its definition, and 8-bit training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import swag
from swag.bench import small_cnn
from swag.lowp import (
    BlockFloat,
    QuantizedOptimizer,
    Quantizer,
    quantize,
    quantize_model,
    representable,
)

NEAREST = BlockFloat(rounding="nearest")


def reference(x: np.ndarray, wl: int, ebits: int) -> np.ndarray:
    """Nearest rounding of each row of ``x`` (float64, plain Python/numpy, no torch)."""
    out = np.empty_like(x)
    lo_e, hi_e = -(2 ** (ebits - 1)), 2 ** (ebits - 1) - 1
    for i, row in enumerate(x):
        m = float(np.abs(row).max())
        e = lo_e if m == 0 else min(max(math.floor(math.log2(m)), lo_e), hi_e)
        step = 2.0 ** (e - (wl - 2))
        out[i] = np.clip(np.round(row / step), -(2 ** (wl - 1)), 2 ** (wl - 1) - 1) * step
    return out


def grid_values(rows: int, cols: int, seed: int) -> Tensor:
    """Rows ``q·2^(e−6)`` with integer q, max |q| in [64, 127] and a random exponent per row."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (rows, cols), generator=g).double()
    q[:, 0] = torch.randint(64, 128, (rows,), generator=g).double()  # fixes the row's exponent
    e = torch.randint(-30, 30, (rows, 1), generator=g)
    return (q * torch.exp2(e - 6.0)).float()


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_representable_values_are_left_exactly_as_they_are(rounding: str) -> None:
    x = grid_values(50, 33, seed=0)
    g = torch.Generator().manual_seed(1)
    fmt = BlockFloat(rounding=rounding)  # type: ignore[arg-type]
    assert torch.equal(quantize(x, fmt, generator=g), x)
    assert representable(x) and not representable(x + 1e-3 * x.abs().amax())
    # a 4-d tensor is blocked per slice along dim 0, like a conv weight (C_out, C_in, k, k)
    x4 = x.reshape(50, 3, 11, 1)
    assert torch.equal(quantize(x4, fmt, generator=g), x4)


@pytest.mark.parametrize(("wl", "ebits"), [(8, 8), (4, 8), (8, 3), (12, 5)])
def test_nearest_rounding_matches_a_float64_reference(wl: int, ebits: int) -> None:
    g = torch.Generator().manual_seed(wl * ebits)
    x = torch.randn(40, 17, generator=g) * torch.exp2(torch.randint(-12, 12, (40, 1)).float())
    x[3] = 0.0  # an all-zero row
    fmt = BlockFloat(word_length=wl, exponent_bits=ebits, rounding="nearest")
    got = quantize(x, fmt)
    # x / step and round-half-even are exact in float32 and float64 alike: equality, not approx
    np.testing.assert_array_equal(got.double().numpy(), reference(x.double().numpy(), wl, ebits))
    tensor_fmt = BlockFloat(word_length=wl, exponent_bits=ebits, block="tensor", rounding="nearest")
    whole = reference(x.double().reshape(1, -1).numpy(), wl, ebits).reshape(40, 17)
    np.testing.assert_array_equal(quantize(x, tensor_fmt).double().numpy(), whole)


def test_stochastic_rounding_is_unbiased_within_monte_carlo_error() -> None:
    n = 40_000
    g = torch.Generator().manual_seed(0)
    row = (torch.rand(64, generator=g) * 2 - 1) * 0.98
    row[0] = 0.99  # row max fixes e = -1, δ = 2^-7; nothing saturates (|x| / δ ≤ 126.72 < 127)
    step = 2.0**-7
    # n blocks holding the same row: n independent draws of each value
    draws = quantize(row.expand(n, -1).contiguous(), generator=g).double()
    x = row.double()
    lower = torch.floor(x / step) * step
    frac = (x - lower) / step
    assert ((draws == lower) | (draws == lower + step)).all()  # only the two neighbours
    # each draw is lower + δ·Bernoulli(f): its mean's standard error is δ·sqrt(f(1−f)/n); allow
    # 5 standard errors (a false alarm has probability < 1e-6 per value), plus float32 slack
    se = step * torch.sqrt(frac * (1 - frac) / n)
    assert ((draws.mean(0) - x).abs() <= 5 * se + 1e-7).all()
    # and the spread is the Bernoulli one, δ²f(1−f): its standard error is below δ²/(2√n) · 1/2
    var = draws.var(0)
    assert ((var - step**2 * frac * (1 - frac)).abs() <= 5 * step**2 / (4 * math.sqrt(n))).all()


def test_saturation_at_the_extreme_codes() -> None:
    g = torch.Generator().manual_seed(0)
    fmt = BlockFloat(exponent_bits=3, rounding="nearest")  # e ≤ 3: |x| ≤ 127 · 2^-3 = 15.875
    x = torch.tensor([100.0, -100.0, 1.0, 0.06])
    assert quantize(x, fmt).tolist() == [15.875, -16.0, 1.0, 0.0]
    assert quantize(x, BlockFloat(exponent_bits=3), generator=g)[:2].tolist() == [15.875, -16.0]
    # the block max rounding up past 127·δ saturates: 1.99 / 2^-6 = 127.36 -> always 127
    top = torch.full((1000,), 1.99)
    assert (quantize(top, generator=g) == 127 * 2.0**-6).all()
    # ±inf saturates at the largest exponent (126 in float32, so that −128·δ = −2^127 is finite);
    # tiny values at the smallest exponent underflow
    big = quantize(torch.tensor([float("inf"), -float("inf")]), NEAREST)
    assert big.tolist() == [127 * 2.0**120, -(2.0**127)]
    tiny = quantize(torch.tensor([2.0**-140, 2.0**-133]), NEAREST)  # δ_min = 2^-134
    assert tiny.tolist() == [0.0, 2.0**-133]


def test_edge_cases_and_bad_input() -> None:
    assert torch.equal(quantize(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert quantize(torch.empty(0, 5)).shape == (0, 5)
    x = torch.randn(6, 7)
    a = quantize(x, generator=torch.Generator().manual_seed(3))
    b = quantize(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and quantize(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="floating tensor"):
        quantize(torch.arange(3))
    with pytest.raises(ValueError, match="word_length must be"):
        BlockFloat(word_length=1)
    with pytest.raises(ValueError, match="exponent_bits must be"):
        BlockFloat(exponent_bits=9)
    with pytest.raises(ValueError, match="block must be"):
        BlockFloat(block="col")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounding must be"):
        BlockFloat(rounding="up")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        QuantizedOptimizer(object())  # type: ignore[arg-type]


def test_quantizer_rounds_activations_forward_and_errors_backward() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=g, requires_grad=True)
    upstream = torch.randn(5, 9, generator=g)
    y = Quantizer(NEAREST, NEAREST)(x)
    assert torch.equal(y, quantize(x.detach(), NEAREST))
    y.backward(upstream)  # type: ignore[no-untyped-call]
    assert x.grad is not None and torch.equal(x.grad, quantize(upstream, NEAREST))
    z = Quantizer(None, None)(x)  # no formats: the identity both ways
    assert torch.equal(z, x.detach())


def _record(model: nn.Module, acts: list[Tensor], errs: list[Tensor]) -> None:
    """Keep each leaf's rounded output, and the rounded error into it (the raw output's grad)."""

    def raw(_m: nn.Module, _i: object, out: Tensor) -> None:
        out.register_hook(lambda grad: errs.append(grad.detach().clone()))

    def rounded(_m: nn.Module, _i: object, out: Tensor) -> None:
        acts.append(out.detach().clone())

    for m in model.modules():
        if next(iter(m.children()), None) is None:
            m.register_forward_hook(raw, prepend=True)  # before the quantiser's hook
            m.register_forward_hook(rounded)  # after it


def test_every_tensor_stays_on_the_8_bit_grid_through_training() -> None:
    torch.manual_seed(0)
    model = small_cnn(width=4)
    g = torch.Generator().manual_seed(0)
    acts: list[Tensor] = []
    errs: list[Tensor] = []
    quantize_model(model, generator=g)
    _record(model, acts, errs)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt = QuantizedOptimizer(sgd, generator=g)
    collector = swag.Collector(model, max_rank=3)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        acts.clear()
        errs.clear()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        collector.collect()
        assert len(acts) == len(errs) == 13  # every leaf of the CNN, both ways
        params = list(model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        momenta = [sgd.state[p]["momentum_buffer"] for p in params]
        assert len(grads) == len(momenta) == len(params) == 12
        for kind, tensors in [
            ("activation", acts), ("error", errs), ("weight", params), ("grad", grads),
            ("momentum", momenta),
        ]:  # fmt: skip
            for i, t in enumerate(tensors):
                assert representable(t.detach()), f"{kind} {i} is off the 8-bit grid"
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    # SWALP: the average lives in float32, between grid points (not itself on the 8-bit grid)
    mean = collector.posterior().mean
    assert not all(representable(t) for t in collector.layout.split(mean))


def test_quantized_optimizer_with_formats_off_is_the_float_optimizer() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = QuantizedOptimizer(
        torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), weight=None, grad=None, state=None
    )
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().sum().backward()  # type: ignore[no-untyped-call]
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert opt_b.state_dict()["param_groups"][0]["lr"] == 0.1 and opt_b.param_groups
