"""swag.lowp in every dtype it accepts: generated cases against a float64 oracle (issue 18, 1).

Each case (dtype × word length × magnitude × block pattern) must be finite, keep zeros zero, lie
on the grid (``representable``) and, with nearest rounding, equal the float64 oracle below, which
computes the same format with the exponent range derived from ``torch.finfo`` of the dtype. A
word length the dtype cannot hold is refused up front instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from swag.lowp import BlockFloat, QuantizedOptimizer, quantize, quantize_model, representable

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
WORD_LENGTHS = [2, 4, 8, 9, 12, 16, 24]
# block maxima from the dtype's bottom (subnormals, tiny) to the top (near overflow)
MAGNITUDES = ["zero", "subnormal", "tiny", "one", "huge"]


def significand_bits(dtype: torch.dtype) -> int:
    """p, from eps = 2^(1−p)."""
    return 1 - math.frexp(torch.finfo(dtype).eps)[1] + 1


def oracle(x: np.ndarray, wl: int, ebits: int, dtype: torch.dtype) -> np.ndarray:
    """Nearest rounding of each row of ``x`` in float64, exponents kept inside ``dtype``."""
    info = torch.finfo(dtype)
    smallest = math.log2(info.smallest_normal * info.eps)  # the smallest subnormal, exactly
    lo_e = max(-(2 ** (ebits - 1)), int(smallest) + wl - 2)
    hi_e = min(2 ** (ebits - 1) - 1, math.floor(math.log2(info.max)) - 1)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        m = float(np.abs(row).max())
        e = lo_e if m == 0 else min(max(math.floor(math.log2(m)), lo_e), hi_e)
        step = 2.0 ** (e - (wl - 2))
        out[i] = np.clip(np.round(row / step), -(2 ** (wl - 1)), 2 ** (wl - 1) - 1) * step
    return out


def sample(dtype: torch.dtype, magnitude: str, seed: int) -> torch.Tensor:
    """A (4, 6) tensor in ``dtype`` whose rows have the given scale (one row all zeros)."""
    info = torch.finfo(dtype)
    scale = {
        "zero": 0.0,
        "subnormal": info.smallest_normal * info.eps * 3,
        "tiny": info.smallest_normal * 4,
        "one": 1.0,
        "huge": info.max / 4,
    }[magnitude]
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1) * scale
    x[2] = 0.0  # an all-zero block in every case
    x[3, :3] = 0.0  # zeros beside non-zeros
    return x.to(dtype)


CASES = [
    (d, wl, m)
    for d in DTYPES
    for wl in WORD_LENGTHS
    for m in MAGNITUDES
    if not (m == "huge" and wl == 2)  # the 2-bit grid has no value near max/4 but saturation
]


@pytest.mark.parametrize(("dtype", "wl", "magnitude"), CASES, ids=str)
def test_every_dtype_gives_finite_values_on_the_grid(
    dtype: torch.dtype, wl: int, magnitude: str
) -> None:
    fmt = BlockFloat(word_length=wl, rounding="nearest")
    x = sample(dtype, magnitude, seed=wl)
    if wl - 1 > significand_bits(dtype):
        with pytest.raises(ValueError, match="word_length"):
            quantize(x, fmt)
        return
    y = quantize(x, fmt)
    assert y.dtype == dtype and bool(y.isfinite().all())
    assert bool((y[x == 0] == 0).all())  # zero stays zero
    assert representable(y, fmt)
    want = oracle(x.double().numpy(), wl, fmt.exponent_bits, dtype)
    np.testing.assert_array_equal(y.double().numpy(), want)  # exact: every grid value is
    # representable in dtype, so the dtype's rounding and float64's agree bit for bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stochastic_rounding_in_half_precision_is_finite_and_on_the_grid(
    dtype: torch.dtype,
) -> None:
    fmt = BlockFloat()
    g = torch.Generator().manual_seed(0)
    for magnitude in MAGNITUDES:
        x = sample(dtype, magnitude, seed=1)
        y = quantize(x, fmt, generator=g)
        assert bool(y.isfinite().all()) and bool((y[x == 0] == 0).all())
        assert representable(y, fmt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantized_optimizer_on_half_weights_writes_no_nan(dtype: torch.dtype) -> None:
    model = nn.Linear(4, 3).to(dtype)
    with torch.no_grad():
        model.bias.zero_()  # an all-zero block: NaN before the fix
        model.weight[0].fill_(1e-7)  # below float16's normal range
    opt = QuantizedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        generator=torch.Generator().manual_seed(0),
    )
    model(torch.ones(2, 4, dtype=dtype)).sum().backward()
    opt.step()
    for p in model.parameters():
        assert bool(p.isfinite().all())
        assert representable(p.detach(), opt.weight)


def test_unsupported_dtypes_and_word_lengths_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"word_length=12 .*bfloat16.*<= 9"):
        quantize(torch.ones(3, dtype=torch.bfloat16), BlockFloat(word_length=12))
    with pytest.raises(ValueError, match="word_length=16"):
        representable(torch.ones(3, dtype=torch.float16), BlockFloat(word_length=16))
    with pytest.raises(ValueError, match="dtype"):
        quantize(torch.ones(3).to(torch.float8_e4m3fn))


class _Pair(nn.Module):
    """Returns a dict holding float tensors (one in a tuple), an integer tensor and a string."""

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"y": x * 1.0001, "z": (x + 0.3,), "idx": torch.arange(3), "note": "kept"}


@pytest.mark.parametrize("kind", ["lstm", "gru", "mha", "dict"])
def test_tuple_and_dict_outputs_are_rounded(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    model: nn.Module = {
        "lstm": nn.LSTM(4, 6, batch_first=True),
        "gru": nn.GRU(4, 6, batch_first=True),
        "mha": nn.MultiheadAttention(4, 2, batch_first=True),
        "dict": _Pair(),
    }[kind]
    fmt = BlockFloat(word_length=4, rounding="nearest")
    handles = quantize_model(model, fmt, None, modules=lambda n, m: m is model)
    out = model(x, x, x) if kind == "mha" else model(x)
    for h in handles:
        h.remove()
    floats = [t for t in _leaves(out) if t.is_floating_point()]
    assert len(floats) >= 2  # every returned float tensor was reached
    for t in floats:
        assert representable(t.detach(), fmt), kind  # a 4-bit grid: float output is not on it
    if kind == "dict":
        assert out["note"] == "kept" and torch.equal(out["idx"], torch.arange(3))


@dataclasses.dataclass
class _Output:
    logits: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    steps: int


class _Pair2(NamedTuple):
    a: torch.Tensor
    b: torch.Tensor


def test_dataclass_and_namedtuple_outputs_keep_their_type_and_are_rounded() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[_Output, _Pair2]:
            return _Output(x * 1.01, (x + 0.1, x - 0.1), steps=3), _Pair2(x * 3.3, x / 7)

    net = Net()
    fmt = BlockFloat(word_length=4, rounding="nearest")
    quantize_model(net, fmt, None, modules=lambda n, m: m is net)
    out, pair = net(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)))
    assert isinstance(out, _Output) and isinstance(pair, _Pair2) and out.steps == 3
    for t in (out.logits, *out.hidden, pair.a, pair.b):
        assert representable(t.detach(), fmt)


def _leaves(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _leaves(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _leaves(o)]
    return []


def test_an_output_it_cannot_reach_is_refused_naming_the_module() -> None:
    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor) -> object:
            return {"set": {1, 2}} if x.sum() > 1e9 else iter([x])

    model = nn.Sequential(nn.Linear(2, 2), Opaque())
    quantize_model(model)
    with pytest.raises(TypeError, match=r"module '1'.*modules="):
        model(torch.ones(1, 2))


def test_sparse_gradients_get_a_clear_error() -> None:
    emb = nn.Embedding(5, 3, sparse=True)
    opt = QuantizedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1))
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match=r"sparse gradient.*sparse=False"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)  # nothing was changed
    with pytest.raises(ValueError, match="x must be a dense tensor"):
        quantize(torch.eye(3).to_sparse())
