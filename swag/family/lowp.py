"""Low-precision training in block floating point, as in SWALP (Yang et al., 2019).

A *block floating point* (BFP) number format stores each value of a block as a ``W``-bit
two's-complement integer mantissa ``q ∈ [−2^(W−1), 2^(W−1) − 1]`` and the whole block shares one
exponent. With ``m`` the block's largest magnitude, the shared exponent is
``e = clamp(⌊log₂ m⌋, −2^(E−1), 2^(E−1) − 1)`` (``E`` exponent bits) and the grid step is
``δ = 2^(e − (W − 2))``, so the block's largest value lands in ``[2^(W−2), 2^(W−1))·δ``: one bit is
the sign and ``W − 1`` bits cover the magnitude. A value ``x`` becomes ``δ · clamp(R(x / δ))``
with ``R`` rounding to nearest (ties to even) or stochastically (up with probability equal to
the fractional part, which is unbiased). Values past the range saturate at the extreme codes:
this happens when the block's maximum rounds up to ``2^(W−1)·δ``, or when the exponent was
clamped by ``E``. NaN stays NaN (and makes the rest of its block meaningless) and ±inf
saturates. The exponent is also kept inside the tensor's dtype: capped above so that
``−2^(W−1)·δ`` stays finite (126 in float32, 14 in float16), and floored so that ``δ`` is at
least the dtype's smallest subnormal (``e ≥ W − 2 − 24`` in float16, ``W − 2 − 133`` in
bfloat16), so every grid value is exactly representable and a zero block stays zero. float16,
bfloat16, float32 and float64 are accepted, with ``W − 1`` at most the dtype's significand bits
(``W ≤ 9`` for bfloat16, ``W ≤ 12`` for float16); half-precision tensors are rounded in float32
and the exact result is cast back.
This is the definition of the SWALP reference code: 8-bit words, 8-bit exponents, one block
per tensor for biases and vectors and one block per row (output channel; per sample for
activations) for everything else.

Arithmetic itself stays in float32 (a simulation, as in the paper): a layer's output is
rounded to the format, not each multiply-add. :class:`Quantizer` rounds activations forward
and back-propagated errors backward; :class:`QuantizedOptimizer` rounds gradients, momentum
buffers and weights around each optimiser step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from swag.core._checks import check_bool, check_generator, check_state_dict

__all__ = [
    "BlockFloat",
    "QuantizedOptimizer",
    "Quantizer",
    "quantize",
    "quantize_model",
    "representable",
]

Rounding = Literal["stochastic", "nearest"]


@dataclasses.dataclass(frozen=True)
class BlockFloat:
    """A block-floating-point format.

    Args:
        word_length: ``W``, bits per value including the sign (SWALP: 8).
        exponent_bits: ``E``, bits of the shared exponent (SWALP: 8), ``e ∈ [−2^(E−1), 2^(E−1)−1]``.
        block: ``"row"``: one exponent per slice along dim 0 for tensors of 2 or more
            dimensions (a weight's output row or channel, an activation's sample), one per
            tensor otherwise; ``"tensor"``: one exponent for the whole tensor.
        rounding: ``"stochastic"`` (unbiased; SWALP) or ``"nearest"`` (ties to even).
    """

    word_length: int = 8
    exponent_bits: int = 8
    block: Literal["row", "tensor"] = "row"
    rounding: Rounding = "stochastic"

    def __post_init__(self) -> None:
        for name in ("word_length", "exponent_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if not 2 <= self.word_length <= 24:
            raise ValueError(f"word_length must be an int in [2, 24], got {self.word_length!r}")
        if not 1 <= self.exponent_bits <= 8:
            raise ValueError(f"exponent_bits must be an int in [1, 8], got {self.exponent_bits!r}")
        if self.block not in ("row", "tensor"):
            raise ValueError(f"block must be 'row' or 'tensor', got {self.block!r}")
        if self.rounding not in ("stochastic", "nearest"):
            raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {self.rounding!r}")

    @property
    def codes(self) -> tuple[int, int]:
        """The smallest and largest integer mantissa, ``(−2^(W−1), 2^(W−1) − 1)``."""
        half = 1 << (self.word_length - 1)
        return -half, half - 1


_SIGNIFICAND_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


def _check_dtype(fmt: BlockFloat, dtype: torch.dtype) -> None:
    """Refuse a dtype whose grid values ``δ·q`` the dtype could not hold exactly."""
    bits = _SIGNIFICAND_BITS.get(dtype)
    if bits is None:
        raise ValueError(
            f"quantize supports float16, bfloat16, float32 and float64 tensors, got dtype {dtype}"
        )
    if fmt.word_length - 1 > bits:
        raise ValueError(
            f"word_length={fmt.word_length} needs {fmt.word_length - 1} significand bits but "
            f"{dtype} has {bits}: use word_length <= {bits + 1} or a wider dtype"
        )


def _check_format(name: str, fmt: object) -> None:
    if fmt is not None and not isinstance(fmt, BlockFloat):
        raise TypeError(
            f"{name} must be a BlockFloat or None (no rounding), got {type(fmt).__name__}"
        )


def _check_input(x: object, fmt: BlockFloat) -> None:
    """Refuse what :func:`quantize` cannot round: a non-tensor, sparse or non-floating one."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_format("fmt", fmt)
    if x.layout != torch.strided:
        raise ValueError(
            f"x must be a dense tensor, got layout {x.layout} (a sparse gradient, as from "
            "nn.Embedding(sparse=True)?): block floating point rounds dense tensors only; "
            "use sparse=False or call .to_dense()"
        )
    if not x.is_floating_point():
        raise ValueError(f"quantize needs a floating tensor, got dtype {x.dtype}")
    _check_dtype(fmt, x.dtype)


def _exponent_range(fmt: BlockFloat, dtype: torch.dtype) -> tuple[int, int]:
    """Allowed shared exponents, inside ``dtype``: ``−2^(W−1)·δ`` finite, ``δ`` not below its
    smallest subnormal (so that no step underflows to zero)."""
    half = 1 << (fmt.exponent_bits - 1)
    info = torch.finfo(dtype)
    subnormal = math.frexp(info.smallest_normal * info.eps)[1] - 1  # log2 of the smallest
    return max(-half, subnormal + fmt.word_length - 2), min(half - 1, math.frexp(info.max)[1] - 2)


def _exponent(amax: Tensor, fmt: BlockFloat, dtype: torch.dtype) -> Tensor:
    """The shared exponent ``e = clamp(⌊log₂ m⌋)`` of each block (int32, shaped like ``amax``),
    in the range of ``dtype`` (the tensor's own, when ``amax`` was computed in a wider one)."""
    lo, hi = _exponent_range(fmt, dtype)
    # ⌊log₂ m⌋ from the float's own exponent: frexp gives m = f·2^k with f in [0.5, 1)
    _, k = torch.frexp(amax)
    e = (k - 1).clamp(lo, hi)
    e = torch.where(amax > 0, e, torch.full_like(e, lo))  # an all-zero block
    return torch.where(torch.isinf(amax), torch.full_like(e, hi), e)  # ±inf saturates


def _step(e: Tensor, fmt: BlockFloat, like: Tensor) -> Tensor:
    """The grid step ``δ = 2^(e − (W − 2))`` (exact, in ``like``'s dtype and device)."""
    return torch.ldexp(torch.ones_like(e, dtype=like.dtype), e - (fmt.word_length - 2))


def _block_max(x: Tensor, fmt: BlockFloat) -> Tensor:
    if fmt.block == "row" and x.dim() >= 2:
        return x.detach().abs().amax(dim=tuple(range(1, x.dim())), keepdim=True)
    return x.detach().abs().amax()


def quantize(
    x: Tensor, fmt: BlockFloat | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    """Round ``x`` to the block-floating-point format ``fmt`` (default: SWALP's 8-bit format).

    Args:
        x: a floating tensor of any shape: float16, bfloat16, float32 or float64 (the result
            has its dtype).
        fmt: the format; ``BlockFloat()`` when None.
        generator: the randomness of stochastic rounding (default: torch's global generator).

    Returns:
        A new tensor of ``x``'s shape whose every block is ``δ·q`` with integer ``q`` in
        :attr:`BlockFloat.codes`. Stochastic rounding is unbiased for every value that does not
        saturate: ``E[quantize(x)] = x``.

    Raises:
        ValueError: for a non-floating dtype or one not listed, or a ``word_length`` wider
            than the dtype's significand (``word_length > 9`` for bfloat16).
    """
    fmt = fmt or BlockFloat()
    _check_input(x, fmt)
    check_generator(generator)
    if x.numel() == 0:
        return x.clone()
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.detach().float()  # every grid value of dtype is exact in float32, and back
    step = _step(_exponent(_block_max(x, fmt), fmt, dtype), fmt, x)
    scaled = x.detach() / step  # exact: step is a power of two
    low = torch.floor(scaled)
    if fmt.rounding == "nearest":
        q = torch.round(scaled)
    else:
        frac = scaled - low  # exact in floating point
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        q = low + (u < frac).to(x.dtype)
    lo, hi = fmt.codes
    return q.clamp_(lo, hi).mul_(step).to(dtype)


def representable(x: Tensor, fmt: BlockFloat | None = None) -> bool:
    """Whether every block of ``x`` is ``δ·q`` with integer ``q`` in range for its exponent.

    A block holding the code ``−2^(W−1)`` has largest magnitude ``2^(W−1)·δ``, one binade above
    its exponent, so both ``⌊log₂ m⌋`` and one less are tried.
    """
    fmt = fmt or BlockFloat()
    _check_input(x, fmt)
    lo, hi = fmt.codes
    e = _exponent(_block_max(x, fmt), fmt, x.dtype)
    ok = torch.zeros_like(e, dtype=torch.bool)
    for shift in (0, 1):  # a coarser exponent's grid lies inside this one's: no need to try it
        q = x / _step(e - shift, fmt, x)
        fits = (q == torch.round(q)) & (q >= lo) & (q <= hi)
        if fmt.block == "row" and x.dim() >= 2:
            fits = fits.flatten(1).all(dim=1).reshape(e.shape)
        else:
            fits = fits.all()
        valid = e - shift >= _exponent_range(fmt, x.dtype)[0]
        ok = ok | (fits & valid)
    return bool(ok.all())


class _Round(torch.autograd.Function):
    """Identity in value up to rounding: ``fwd`` on the way forward, ``bwd`` on the way back."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        fwd: BlockFloat | None,
        bwd: BlockFloat | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        ctx.bwd, ctx.generator = bwd, generator
        return x.clone() if fwd is None else quantize(x, fwd, generator=generator)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        if ctx.bwd is None:
            return grad, None, None, None
        return quantize(grad, ctx.bwd, generator=ctx.generator), None, None, None


class Quantizer(nn.Module):
    """Rounds activations forward and back-propagated errors backward (straight-through).

    Args:
        forward: format of the activations (None: leave them in float).
        backward: format of the errors, the gradients w.r.t. this point (None: float).
        generator: randomness of stochastic rounding, forward and backward.
    """

    def __init__(
        self,
        forward: BlockFloat | None = BlockFloat(),
        backward: BlockFloat | None = BlockFloat(),
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_format("forward", forward)
        _check_format("backward", backward)
        check_generator(generator)
        self.fwd, self.bwd, self.generator = forward, backward, generator

    def forward(self, x: Tensor) -> Tensor:
        """``x`` rounded to ``forward`` (any shape, kept); its gradient rounded to ``backward``."""
        out: Tensor = _Round.apply(x, self.fwd, self.bwd, self.generator)  # type: ignore[no-untyped-call]
        return out


def quantize_model(
    model: nn.Module,
    forward: BlockFloat | None = BlockFloat(),
    backward: BlockFloat | None = BlockFloat(),
    *,
    generator: torch.Generator | None = None,
    modules: Callable[[str, nn.Module], bool] | None = None,
) -> list[RemovableHandle]:
    """Round the output of every leaf module forward and the error into it backward.

    Registers a forward hook on every module without children (or those ``modules(name,
    module)`` selects) that passes the output through a :class:`Quantizer`; the model input is
    rounded too (a forward pre-hook on ``model``). Remove the hooks with ``h.remove()`` on each
    returned handle, e.g. to evaluate the float network.

    An output that is a tuple, list, dict or dataclass (an LSTM's ``(out, (h, c))``,
    ``nn.MultiheadAttention``'s ``(out, weights)``) has every floating tensor inside it rounded;
    integer tensors, None, numbers and strings pass as they are.

    Raises:
        TypeError: in the forward pass, naming the module, if an output holds something else
            (its tensors could not be reached); leave that module out with ``modules=``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if modules is not None and not callable(modules):
        raise TypeError(
            f"modules must be a callable (name, module) -> bool or None, got "
            f"{type(modules).__name__}"
        )
    quantizer = Quantizer(forward, backward, generator=generator)
    names = {id(m): n for n, m in model.named_modules()}

    def hook(m: nn.Module, _inp: Any, out: Any) -> Any:
        return _round_output(out, quantizer, names.get(id(m), type(m).__name__))

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            quantizer(a) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
        )

    pick = modules or (lambda _n, m: next(iter(m.children()), None) is None)
    handles = [model.register_forward_pre_hook(pre_hook)]
    handles += [m.register_forward_hook(hook) for n, m in model.named_modules() if pick(n, m)]
    return handles


def _round_output(out: Any, quantizer: Quantizer, name: str) -> Any:
    """``out`` with every floating tensor passed through ``quantizer``, its structure kept."""
    if isinstance(out, Tensor):
        return quantizer(out) if out.is_floating_point() else out
    if out is None or isinstance(out, (bool, int, float, complex, str, bytes)):
        return out
    if isinstance(out, tuple):
        items = [_round_output(o, quantizer, name) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)  # namedtuple
    if isinstance(out, list):
        return [_round_output(o, quantizer, name) for o in out]
    if isinstance(out, dict):
        return type(out)({k: _round_output(v, quantizer, name) for k, v in out.items()})
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        changes = {
            f.name: _round_output(getattr(out, f.name), quantizer, name)
            for f in dataclasses.fields(out)
            if f.init
        }
        return dataclasses.replace(out, **changes)
    raise TypeError(
        f"quantize_model cannot round the output of module {name!r}, a "
        f"{type(out).__name__}; leave the module out with modules=, or return tensors in a "
        "tuple, list, dict or dataclass"
    )


class QuantizedOptimizer:
    """Wraps an optimiser so that gradients, its state and the weights live on a BFP grid.

    ``step()`` rounds every parameter's gradient to ``grad``, runs the wrapped optimiser, then
    rounds the state tensors named in ``state_keys`` (SGD's ``momentum_buffer``) to ``state``
    and the parameters to ``weight``. Weight decay and the update are computed in float between
    the roundings, as in SWALP. Schedulers go on :attr:`optimizer`, the wrapped one.

    Args:
        optimizer: the float optimiser over the model's parameters.
        weight: format of the weights (None: leave them in float).
        grad: format of the gradients (None: float).
        state: format of the optimiser state named in ``state_keys`` (None: float).
        state_keys: which per-parameter state entries to round.
        generator: randomness of stochastic rounding.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        weight: BlockFloat | None = BlockFloat(),
        grad: BlockFloat | None = BlockFloat(),
        state: BlockFloat | None = BlockFloat(),
        state_keys: Iterable[str] = ("momentum_buffer",),
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        for name, fmt in (("weight", weight), ("grad", grad), ("state", state)):
            _check_format(name, fmt)
        if isinstance(state_keys, str) or not isinstance(state_keys, Iterable):
            raise TypeError(
                f"state_keys must be an iterable of state names such as ('momentum_buffer',), "
                f"got {state_keys!r}"
            )
        check_generator(generator)
        self.optimizer = optimizer
        self.weight, self.grad, self.state = weight, grad, state
        self.state_keys = tuple(state_keys)
        self.generator = generator
        self.quantize_weights()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimiser's groups (the same list: a change to a rate reaches it)."""
        return self.optimizer.param_groups

    def _params(self) -> Iterable[Tensor]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def quantize_weights(self) -> None:
        """Round the parameters to ``weight`` (done at construction and after every step)."""
        if self.weight is not None:
            for p in self._params():
                p.copy_(quantize(p, self.weight, generator=self.generator))

    @torch.no_grad()
    def step(self) -> None:
        """Round gradients, take the wrapped optimiser's step, round its state and the weights."""
        if self.grad is not None:
            for i, p in enumerate(self._params()):
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError(
                        f"parameter {i} of the optimizer has a sparse gradient (an "
                        "nn.Embedding(sparse=True)?); QuantizedOptimizer rounds dense "
                        "gradients only: build the layer with sparse=False. Nothing was changed."
                    )
            for p in self._params():
                if p.grad is not None:
                    p.grad.copy_(quantize(p.grad, self.grad, generator=self.generator))
        self.optimizer.step()
        if self.state is not None:
            for p in self._params():
                st = self.optimizer.state.get(p, {})
                for key in self.state_keys:
                    t = st.get(key)
                    if isinstance(t, Tensor) and t.is_floating_point():
                        t.copy_(quantize(t, self.state, generator=self.generator))
        self.quantize_weights()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (the wrapped optimiser's ``zero_grad``)."""
        check_bool(set_to_none, "set_to_none")
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimiser's state (its momentum buffers already on the ``state`` grid)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` into the wrapped optimiser.

        The loaded buffers are used as they are; the next :meth:`step` rounds them again.

        Raises:
            TypeError: if ``state_dict`` is not a dict.
        """
        check_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict)
