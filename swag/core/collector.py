"""The collector: streaming first and second moments of SGD iterates and a ring of deviations."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from swag.core._averaging_rules import AveragingRule
from swag.core._checks import (
    check_collector_args,
    check_iterate,
    check_min_variance,
    check_storage,
)
from swag.core._fast_average import mean_only
from swag.core._gaussian import swag_gaussian
from swag.core._initdoc import document_init
from swag.core._params import IterateReader, collect_chunks
from swag.core._state import CollectorState, load_collector, rule_tag, save_collector
from swag.core._step import CompiledCollect
from swag.core.distributed._shard import any_rank, require_whole, shard_plan
from swag.core.distributed.sharded import ShardedPosterior
from swag.core.layout import ParamLayout, ParamSelector
from swag.core.posterior import SWAGPosterior
from swag.persistence import _io

__all__ = ["Collector"]


@document_init
class Collector(CollectorState):
    """Gathers SWA/SWAG statistics of a model's parameters, one ``collect()`` per iterate.

    State, all preallocated flat buffers on one device (``P`` = covered scalars, ``K`` =
    ``max_rank``):

    - ``shift`` ``(P,)``: the first iterate θ_1, a fixed origin;
    - ``shifted_mean`` ``(P,)``: the running mean of θ_i − θ_1. The SWA mean is
      θ̄_n = shift + shifted_mean (:attr:`mean`). Averaging offsets from θ_1 rather than θ itself
      keeps the numbers small: a float32 running mean of θ stops moving once its increments σ/n
      fall below half an ulp of |θ|, and that error then biases the variance;
    - ``m2`` ``(P,)``: Welford's sum Σ_i (θ_i − θ̄_{i−1})(θ_i − θ̄_i), so that the diagonal
      variance is ``m2 / n`` without the cancellation of ``E[θ²] − E[θ]²``;
    - ``deviations`` ``(K, P)``: a ring of the last ``K`` deviations θ_i − θ̄_i (θ̄_i is the mean
      *including* θ_i, as in the SWAG paper); row ``(i − 1) % K`` holds iterate ``i``.

    Memory held: ``(K + 3) · P`` elements (the ring in ``deviation_dtype``), plus a scratch
    buffer: ``P`` elements when ``K > 0`` and ``P ≤ 2²⁰`` (at most 4 MiB in float32), else
    ``min(P, 2¹⁸)``. ``collect()`` allocates nothing P-sized. It goes over the statistics chunk
    by chunk, so that ``θ − θ_1`` is reused from cache and each ring slot is written once; a
    large model's parameters are read twice (a finiteness check, then ``θ − θ_1`` in one pass).
    Sharded (``shard=True`` or an FSDP2 model), ``P`` above is this rank's ``L ≈ P / W``.

    Parameters are named as in the plain model: the prefixes of DDP (``module.``) and
    ``torch.compile`` (``_orig_mod.``) are dropped, FSDP2 keeps the names, so a collector, its
    files and its posteriors move freely between a wrapper and the model inside it. A collector
    may be a submodule of the model (so that the model's ``state_dict`` checkpoints it):
    ``.to(device)`` moves its statistics, but casts (``model.half()``, ``.to(torch.bfloat16)``)
    leave them in their own dtype. A ``collect()`` that would write NaN/inf (a NaN/inf
    parameter, or a finite one that overflows the statistics' dtype when cast, such as 1e39
    in float64 with float32 statistics) raises and records nothing.

    Args:
        model: the network being trained. Only a reference is kept, to read its parameters.
            Its parameters must hold values: a model on the ``meta`` device is refused.
        max_rank: K, the number of deviations kept for the low-rank covariance; 0 for
            diagonal-only SWAG (and SWA).
        params: which parameters to cover (default: every floating-point parameter with
            ``requires_grad``); a name prefix, a sequence of prefixes, or a predicate
            ``(name, param) -> bool``. A tied parameter (one tensor under several names,
            e.g. ``out.weight`` shared with ``emb.weight``) is selected when any of its names
            is, and covered once, under its first name in ``named_parameters()``.
        device: where the statistics live (default: the parameters' device).
        dtype: the statistics' floating dtype: float32 (default) or float64. Half precision is
            refused, being wrong in ordinary use (bfloat16's mean and M2 stall, float16
            underflows σ² to 0; measured error bounds per dtype: docs/concepts.md): store the
            ring in bfloat16 instead (``deviation_dtype``). Parameters finer than the
            statistics (float64 into float32) have ``θ − θ_1`` taken in their own dtype.
        deviation_dtype: dtype of the deviation ring (default ``dtype``); bfloat16 halves its
            memory at a relative error of about 2⁻⁸ per stored deviation. float16 is refused,
            as for ``dtype``: bfloat16 costs the same memory and has float32's range.
        shard: keep only this rank's ``1/W`` of the statistics (``W`` = world size of
            ``process_group``, split as :mod:`swag.distributed` describes) of a model that is
            the same on every rank (plain or DDP); needs an initialised process group. An FSDP2
            model (``fully_shard``) is always collected sharded, from its local shards.
        process_group: the ranks sharing the statistics (default: the default group); each
            sharded collect makes one ``all_reduce`` of one number, so that a NaN/inf in any
            rank's rows stops every rank.
        compiled: fuse each collect into one pass with ``torch.compile`` (opt-in; eager when
            sharded or with a rule). Compiling takes seconds to tens of seconds (a C++
            compiler on CPU); then a collect moves about half the memory of the eager path,
            agreeing to rounding. If compiling fails, a ``RuntimeWarning`` says why and the
            eager path is used. Each collector compiles (and frees) its own copy of the step.
        average: how iterates are weighted (:mod:`swag.averaging`): ``None`` for the equal
            (SWA) average, or ``swag.EMA``, ``swag.PowerEMA``, ``swag.LAWA``. Mean, variance and
            deviation ring all follow its weights (see docs/averaging.md); a collector with a
            rule collects on the eager path.
        variance: ``False`` keeps only the mean (needs ``max_rank=0``; not with LAWA): 1·P
            held, one foreach lerp per collect, NaN/inf caught when :attr:`mean` is read.

    Raises:
        TypeError: for an argument of the wrong type (named).
        ValueError: for a bad value (named), parameters on the ``meta`` device or not yet
            initialised (a lazy module before its first forward pass), or a selection that
            matches nothing.
        RuntimeError: when created under ``torch.inference_mode()`` (its statistics would be
            inference tensors that ``collect()`` cannot update); collecting under it is fine.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> collector = Collector(model, max_rank=5)
        >>> for _ in range(10):
        ...     _ = model.weight.data.add_(0.01)  # stands in for an optimizer step
        ...     collector.collect()
        >>> collector.n, collector.rank
        (10, 5)
    """

    _scratch: Tensor

    def __init__(
        self,
        model: nn.Module,
        max_rank: int = 20,
        *,
        params: ParamSelector = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        deviation_dtype: torch.dtype | None = None,
        shard: bool = False,
        process_group: dist.ProcessGroup | None = None,
        compiled: bool = False,
        average: AveragingRule | None = None,
        variance: bool = True,
    ) -> None:
        super().__init__()
        deviation_dtype = dtype if deviation_dtype is None else deviation_dtype
        check_collector_args(max_rank, dtype, deviation_dtype, shard, compiled, model)
        self.layout = ParamLayout.from_model(model, params)
        tensors = self.layout.resolve(model)
        device = check_storage(self.layout.names, tensors, device)
        self.max_rank = max_rank
        self.compiled = compiled
        # plan: which entries this rank holds (None: all of them); slices: where they are
        self.plan, self.process_group, slices, numels = shard_plan(
            self.layout, tensors, shard, process_group
        )
        self._reader = IterateReader(self.layout, numels, slices, dtype)
        size = sum(numels)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self._fast = mean_only(average, variance, max_rank, numels)
        self._rule_name = rule_tag(average, self._fast is not None)
        for name in ("shift", "shifted_mean", "m2"):
            held = size if self._fast is None or name == "shifted_mean" else 0
            self.register_buffer(name, torch.zeros(held, **kw))
        self.averaging = (
            None if average is None or self._fast else average.bind(size, device, dtype)
        )
        self.register_buffer(
            "deviations", torch.zeros(max_rank, size, device=device, dtype=deviation_dtype)
        )
        self._chunks, chunk = collect_chunks(numels, max_rank)  # through a cache-sized scratch
        chunk = 0 if self._fast is not None else chunk  # the mean-only path needs no scratch
        self.register_buffer("_scratch", torch.empty(chunk, **kw), persistent=False)
        self._fused = CompiledCollect()  # compiled on first use, per collector
        self._n = 0
        self.__dict__["_model"] = model  # a plain reference: not a submodule, not in state_dict

    @property
    def n(self) -> int:
        """The number of iterates collected."""
        return self._n

    @property
    def rank(self) -> int:
        """The number of deviations stored, ``min(n, max_rank)``."""
        return min(self._n, self.max_rank)

    @torch.no_grad()
    def collect(self, model: nn.Module | None = None) -> None:
        """Record the current parameters of ``model`` (default: the model given at creation).

        Raises:
            ValueError: if the covered parameters no longer match the layout (names, shapes,
                dtypes) or hold NaN/inf; the statistics are left untouched.
        """
        reader = self._reader
        flats = reader.flats(self.__dict__["_model"] if model is None else model)
        direct = reader.direct(flats, self.m2)
        sharded = self.plan is not None
        if self._fast is not None:
            self._fast.collect(self.shifted_mean, flats, self._n + 1, direct)
            self._n += 1
            return
        n = self._n + 1
        slot = self.deviations[(n - 1) % self.max_rank] if self.max_rank else None
        if self.averaging is None and self.compiled and not sharded and direct and n > 1:
            done = self._fused(
                flats, (self.shift, self.shifted_mean, self.m2, slot), reader.spans, n
            )
            self.compiled = done is not None  # could not compile: eager from now on
            if done:
                self._n = n
                return  # else NaN/inf, state untouched: the eager path names the culprits
        whole = len(self._chunks) == 1
        if n == 1 or not whole or sharded:
            self._check_finite(flats)  # before any write: chunks update the state one by one
        if n == 1:
            self.layout.gather(flats, self.shift)
            if reader.finer:  # θ_1 rounded into the shift: its residual starts the mean
                reader.offset(flats, self.shift, self.shifted_mean, direct)
            if slot is not None:
                slot.zero_()  # θ_1 − θ̄_1 = 0; M2 stays 0
            self._n = n
            return
        for start, end, pieces in self._chunks:
            span = slice(start, end)
            x = self._scratch[: end - start]
            parts = flats if whole else [flats[i][a:b] for i, a, b in pieces]
            reader.offset(parts, self.shift[span], x, direct and not whole)  # x = θ_n − θ_1
            if whole and not sharded and not math.isfinite(x.sum(dtype=reader.sum_dtype).item()):
                self._check_finite(flats, x)  # names the culprits, or was a false alarm
            mean = self.shifted_mean[span]
            # θ_n − θ̄_n, written once into the ring slot (x is read back from cache)
            dev = slot[span] if slot is not None and slot.dtype == x.dtype else x
            if self.averaging is not None:  # a weighting rule (swag.averaging)
                self.averaging.update(n, span, x, mean, self.m2[span], dev)
            else:
                mean.lerp_(x, 1.0 / n)
                torch.sub(x, mean, out=dev)
                # Welford: (θ_n − θ̄_{n−1})(θ_n − θ̄_n) = (θ_n − θ̄_n)² · n / (n − 1)
                self.m2[span].addcmul_(dev, dev, value=n / (n - 1))
            if slot is not None and dev is x:
                slot[span].copy_(x)  # a ring of another dtype
        self._n = n

    @property
    def mean(self) -> Tensor:
        """θ̄_n ``(P,)``, the mean of the iterates collected so far under the rule (a new tensor).

        Raises:
            ValueError: on the mean-only path, if an iterate with NaN/inf was collected.
        """
        if self._fast is None:
            return self.shift + self.shifted_mean
        return self._fast.read(self.shifted_mean)

    def _check_finite(self, flats: list[Tensor], written: Tensor | None = None) -> None:
        """Raise, before any write, if the iterate has NaN/inf or would overflow when stored.

        ``written``: ``θ_n − θ_1`` in the statistics' dtype, when the caller has it. Sharded,
        the ranks agree through one ``all_reduce`` of one number (:func:`_checks.check_iterate`).
        """
        device, reader = self.m2.device, self._reader
        parts = None if written is None else [written[s] for s in reader.spans]
        dtypes = (reader.sum_dtypes, reader.wider, self.m2.dtype)
        group = self.process_group
        agree = None if self.plan is None else lambda f: any_rank(f, device, group)
        check_iterate(self._n + 1, self.layout.names, flats, parts, dtypes, device, agree)

    def posterior(self, *, min_variance: float = 1e-30) -> SWAGPosterior:
        """A frozen snapshot: the SWAG posterior of the iterates collected so far.

        Args:
            min_variance: floor for the diagonal variance ``m2 / n`` (keeps σ > 0 for
                ``log_prob``; the SWAG paper's code uses 1e-30).

        Raises:
            ValueError: if ``min_variance`` is negative, NaN or inf, or the statistics
                overflowed their dtype (iterates ~1e19 apart in float32).
            RuntimeError: if nothing was collected yet, or the collector is sharded (use
                :meth:`sharded_posterior`).
        """
        require_whole(self.plan, "posterior")
        return SWAGPosterior(*self._snapshot(min_variance), self.layout, self._n)

    def sharded_posterior(self, *, min_variance: float = 1e-30) -> ShardedPosterior:
        """This rank's part of :meth:`posterior`, for a sharded collector; no communication.

        Raises:
            ValueError: as :meth:`posterior` (``min_variance``, overflowed statistics).
            RuntimeError: if nothing was collected yet, or the collector is not sharded.
        """
        if self.plan is None:
            raise RuntimeError("this collector is not sharded; use posterior()")
        return ShardedPosterior(
            *self._snapshot(min_variance), self.plan, self._n, self.process_group
        )

    def _snapshot(self, min_variance: float) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, σ and the ring oldest first (new tensors)."""
        check_min_variance(min_variance)
        if self._n == 0:
            raise RuntimeError("nothing collected yet: call collect() at least once first")
        if self._fast is not None:
            self._fast.refuse_posterior()
        divisor = self._n if self.averaging is None else self.averaging.divisor(self._n)
        return swag_gaussian(self.mean, self.m2, self.deviations, self._n, divisor, min_variance)

    # -- persistence: the record is CollectorState's (_state), the file format _io's --------

    def save(self, path: _io.PathLike) -> None:
        """Write the collector's state to ``path`` (safetensors, atomic) to resume later.

        Raises:
            RuntimeError: if the collector is sharded (use :func:`swag.distributed.save`), as
                :meth:`posterior` does.
        """
        require_whole(self.plan, "save")
        save_collector(path, self._statistics(), self._meta())

    @classmethod
    def load(
        cls,
        path: _io.PathLike,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        compiled: bool = False,
    ) -> Collector:
        """Resume a collector saved with :meth:`save`, attached to ``model``.

        The covered parameters are those recorded in the file; ``model`` must have them with the
        same shapes and dtypes. Continuing to collect gives bit-identical results to a run that
        was never interrupted (on the eager path; ``compiled`` is as for :class:`Collector`).
        The file is checked whole (fields, tensor shapes and dtypes, finite statistics,
        checksum) before anything is allocated; ``model`` is never written.

        Raises:
            ValueError: naming what does not match, or the file and field if it is damaged or
                foreign.
        """
        make = functools.partial(cls, model, device=device, compiled=compiled)
        return load_collector(path, make)

    def extra_repr(self) -> str:
        shard = "" if self.plan is None else f", shard {self.plan.rank}/{self.plan.world}"
        return f"P={self.layout.size}, max_rank={self.max_rank}, n={self._n}{shard}"
