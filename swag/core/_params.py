"""Parameter I/O internals: wrapper prefixes, shards, chunk plans, bindings, working copies.

With :mod:`swag.layout`, the only code that reads or writes model parameters.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Sequence
from typing import Protocol, cast

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The module inside the wrappers that rename parameters, and the prefix they add.

    DDP adds ``module.``, ``torch.compile`` adds ``_orig_mod.`` (in any nesting, e.g.
    ``_orig_mod.module.``); FSDP2 (``fully_shard``) keeps the names. Layouts record the inner
    names, so that what is collected on a wrapper applies to, saves for and loads into the plain
    model, and back.
    """
    prefix = ""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model, prefix = model.module, prefix + "module."
        elif _is_compiled(model):
            model, prefix = cast(nn.Module, model._orig_mod), prefix + "_orig_mod."
        else:
            return model, prefix


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper (without importing dynamo if unused)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def local_part(t: Tensor) -> Tensor:
    """The part of ``t`` this process holds: a DTensor's local shard (FSDP2), else ``t``."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else cast(Tensor, to_local())


_CHUNK = 1 << 18
_WHOLE_MAX = 1 << 20


def collect_chunks(
    numels: Sequence[int], max_rank: int
) -> tuple[list[tuple[int, int, list[tuple[int, int, int]]]], int]:
    """The chunks a collect goes through (:func:`plan_chunks`) and their largest size.

    Work goes chunk by chunk through a cache-sized scratch buffer, so that each chunk of
    θ − θ_1 is reused from cache and each ring slot is written once. With ``max_rank`` > 0 a
    model of up to 2^20 entries goes in one chunk: few large operations beat many small ones,
    and its scratch is small next to the ring.
    """
    size = sum(numels)
    chunk = size if max_rank > 0 and size <= _WHOLE_MAX else min(size, _CHUNK)
    return plan_chunks(numels, chunk), chunk


def plan_chunks(
    numels: Sequence[int], chunk: int
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Split the concatenation of pieces of ``numels`` entries into ranges of ``chunk`` at most.

    Returns:
        ``(start, end, pieces)`` per range; ``pieces`` lists ``(i, a, b)``: entries ``a:b`` of
        piece ``i`` fill the range, in order.
    """
    plan = []
    size = sum(numels)
    for start in range(0, size, chunk):
        end = min(start + chunk, size)
        pieces = []
        o = 0
        for i, n in enumerate(numels):
            lo, hi = max(o, start), min(o + n, end)
            if lo < hi:
                pieces.append((i, lo - o, hi - o))
            o += n
        plan.append((start, end, pieces))
    return plan


class BoundParams:
    """A layout bound to one model: its covered parameters as flat views, validated once.

    Built by :meth:`ParamLayout.bind` from the layout's ``names`` and the model's parameters
    ``params`` in that order (:meth:`ParamLayout.resolve`).

    For FSDP2 (DTensor) parameters the views are of the local shards.

    :meth:`current` re-checks, without walking the whole module tree, that the model still
    holds the very same parameter objects at the same places, with the same storages and
    shapes; :meth:`flats` then hands out the cached flat views. Replacing a submodule or a
    parameter, assigning ``param.data`` (even to the same storage with other strides), or
    moving the model all make it stale.
    """

    def __init__(self, names: Sequence[str], params: Sequence[Tensor], model: nn.Module) -> None:
        self.model = model
        tensors = [local_part(t) for t in params]
        self._views = [t.reshape(-1) for t in tensors]
        self._cacheable = all(t.is_contiguous() for t in tensors)
        _, prefix = unwrap(model)
        links: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
        self._params: list[tuple[nn.Module, str, nn.Parameter, tuple[object, ...]]] = []
        for name in names:
            *path, attr = (prefix + name).split(".")
            owner = model
            for key in path:
                child = owner._modules[key]
                assert child is not None  # resolve() found the parameter through it
                links[(id(owner), key)] = (owner, key, child)
                owner = child
            param = owner._parameters[attr]
            assert param is not None
            self._params.append((owner, attr, param, _binding(param)))
        self._links = list(links.values())

    def current(self) -> bool:
        """Whether the bound parameters are still the model's, unchanged in place and shape."""
        for parent, key, child in self._links:
            if parent._modules.get(key) is not child:
                return False
        for owner, attr, p, binding in self._params:
            if owner._parameters.get(attr) is not p or _binding(p) != binding:
                return False
        return True

    def flats(self) -> list[Tensor]:
        """The covered parameters, flattened (``(numel,)`` each, detached)."""
        if self._cacheable:
            return self._views
        return [local_part(p.detach()).reshape(-1) for _, _, p, _ in self._params]


def _binding(param: Tensor) -> tuple[object, ...]:
    """Where ``param``'s values are: pointer, shape and strides of its (local) data.

    The strides matter: ``p.data = p.data.t()`` on a square weight keeps the storage and the
    shape, but a flat view taken before it reads the values in the old order.
    """
    t = local_part(param)
    return t.data_ptr(), tuple(t.shape), t.stride()


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that survives tensors computed from its parameters.

    Modules such as ``torch.nn.utils.prune`` keep a computed tensor (``weight = weight_orig *
    weight_mask``) as a plain attribute; after a backward pass it is a non-leaf of the autograd
    graph, which ``copy.deepcopy`` refuses. Such tensors are copied detached: the module
    recomputes them from its copied parameters on its next forward pass.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


class Layout(Protocol):
    """What :class:`IterateReader` reads through: a :class:`~swag.core.layout.ParamLayout`
    (named structurally: the layout imports this module)."""

    @property
    def dtypes(self) -> tuple[torch.dtype, ...]: ...

    @property
    def numels(self) -> tuple[int, ...]: ...

    def bind(self, model: nn.Module) -> BoundParams: ...

    def gather(self, pieces: Sequence[Tensor], out: Tensor) -> Tensor: ...


class IterateReader:
    """Reads a model's covered parameters as a collector stores them: flat, this rank's part.

    ``slices`` are this rank's entries of each flat parameter when the model holds more than
    them (DDP or ``shard=True``; None: all of them, or FSDP2's local shards); ``spans`` cut
    the flat statistics per parameter. Against the statistics' ``dtype``: ``sum_dtypes`` sum
    in at least float32 (half sums would overflow on ordinary weights), as ``sum_dtype`` sums
    the statistics; ``wider`` lists the parameters whose range exceeds ``dtype``'s (finite
    values may still overflow when cast, so they are range-checked); ``finer`` says some
    parameter is more precise (``θ − θ_1`` is then taken in its dtype, before the cast).
    """

    def __init__(
        self,
        layout: Layout,
        numels: tuple[int, ...],
        slices: tuple[tuple[int, int], ...] | None,
        dtype: torch.dtype,
    ) -> None:
        self.layout, self.numels, self.slices = layout, numels, slices
        ends = list(itertools.accumulate(numels, initial=0))
        self.spans = [slice(a, b) for a, b in itertools.pairwise(ends)]  # each parameter's
        self.dtypes = set(layout.dtypes)
        self.sum_dtypes = [torch.promote_types(d, torch.float32) for d in layout.dtypes]
        self.sum_dtype = torch.promote_types(dtype, torch.float32)
        top, eps = torch.finfo(dtype).max, torch.finfo(dtype).eps
        self.wider = [i for i, d in enumerate(layout.dtypes) if torch.finfo(d).max > top]
        self.finer = any(torch.finfo(d).eps < eps for d in layout.dtypes)
        self._bound: BoundParams | None = None

    def flats(self, model: nn.Module) -> list[Tensor]:
        """The covered parameters of ``model``, flat; the binding is reused while it is current."""
        bound = self._bound
        if bound is None or bound.model is not model or not bound.current():
            bound = self._bound = self.layout.bind(model)
            numels = self.layout.numels if self.slices is not None else self.numels
            if [f.numel() for f in bound.flats()] != list(numels):
                raise ValueError(
                    "the model's parameters are not sharded as at creation (an FSDP2 model "
                    "between forward and backward?); collect after optimizer.step()"
                )
        if self.slices is None:
            return bound.flats()
        return [f[a:b] for f, (a, b) in zip(bound.flats(), self.slices, strict=True)]

    def direct(self, flats: list[Tensor], stats: Tensor) -> bool:
        """Whether the parameters have the dtype and device of ``stats`` (no cast, no copy)."""
        return self.dtypes == {stats.dtype} and all(t.device == stats.device for t in flats)

    def offset(self, parts: list[Tensor], shift: Tensor, out: Tensor, direct: bool) -> None:
        """``out = θ − θ_1`` over one chunk.

        One pass per parameter piece when ``direct`` (same dtype and device as the statistics);
        per piece in the parameter's dtype when that is finer than the statistics'
        (:func:`shifted`); else a gather (casting, copying across devices) then a subtraction,
        which is also the cheaper path for a whole model in one chunk (one large operation).
        """
        if not direct and not self.finer:
            self.layout.gather(parts, out).sub_(shift)
            return
        pos = 0
        for part in parts:
            end = pos + part.numel()
            if direct:
                torch.sub(part, shift[pos:end], out=out[pos:end])
            else:
                out[pos:end].copy_(shifted(part, shift[pos:end]))
            pos = end


def shifted(theta: Tensor, shift: Tensor) -> Tensor:
    """``θ − θ_1`` taken in the wider of the two dtypes, then cast to ``shift``'s (same shape).

    A float64 parameter cast to float32 before the subtraction loses every digit of its spread
    below ``|θ| · 2⁻²⁴``: at ``|θ|/σ ≈ 10⁷`` the variance is off by tens of percent. The
    difference is small, so casting it afterwards keeps float32's relative precision.
    """
    wide = torch.promote_types(theta.dtype, shift.dtype)
    diff = theta.to(device=shift.device, dtype=wide) - shift.to(wide)
    return diff.to(shift.dtype)
