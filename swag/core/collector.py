"""The collector: streaming first and second moments of SGD iterates and a ring of deviations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from swag.core._averaging_rules import AveragingRule
from swag.core._checks import (
    check_collector_args,
    check_min_variance,
    check_statistics_dtype,
    check_storage,
    nonfinite,
    overflowing,
)
from swag.core._fast_average import MeanOnly
from swag.core._initdoc import document_init
from swag.core._params import BoundParams, plan_chunks
from swag.core._step import compiled_step
from swag.core.distributed._shard import shard_plan
from swag.core.distributed.sharded import ShardedPosterior
from swag.core.layout import ParamLayout, ParamSelector
from swag.core.posterior import SWAGPosterior
from swag.persistence import _io
from swag.persistence._checked_state import CheckedState

__all__ = ["Collector"]

_CHUNK = 1 << 18
_WHOLE_MAX = 1 << 20
_STATE = _io.COLLECTOR_STATISTICS


@document_init
class Collector(CheckedState):
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
        dtype: the statistics' floating dtype: float32 (default) or float64. Half precision
            (``torch.bfloat16``, ``torch.float16``) is refused rather than warned about,
            because it is wrong in ordinary use, not only in rare cases: bfloat16's running
            mean and M2 stop growing once their increments fall below half an ulp (the
            variance is about half the truth after a few thousand collects), and float16
            underflows the σ² of typical weights (1e-8 and below) to exactly 0. Store the ring
            in bfloat16 instead (``deviation_dtype``). Parameters finer than the statistics
            (float64 into float32) have ``θ − θ_1`` taken in their own dtype before the cast.
            Measured error bounds per dtype: docs/concepts.md.
        deviation_dtype: dtype of the deviation ring (default ``dtype``); bfloat16 halves its
            memory at a relative error of about 2⁻⁸ per stored deviation. float16 is refused,
            as for ``dtype``: bfloat16 costs the same memory and has float32's range.
        shard: keep only this rank's ``1/W`` of the statistics (``W`` = world size of
            ``process_group``), split as :mod:`swag.distributed` describes; the model is then
            the same on every rank (plain or DDP-wrapped) and a collect communicates one
            number (see ``process_group``). Needs an initialised process group. An FSDP2
            model (``fully_shard``) is always collected sharded, from each rank's local shards.
        process_group: the ranks sharing the statistics (default: the default group).
            Sharded, each collect makes one ``all_reduce`` of one number over it, so that a
            NaN/inf in any rank's rows stops every rank.
        compiled: fuse each collect into one pass with ``torch.compile`` (opt-in). The first
            collects compile it, which takes seconds to tens of seconds (a C++ compiler is
            needed on CPU); after that a collect moves about half the memory of the eager
            path. Results agree with the eager path to rounding, not bit for bit. If compiling
            fails, a ``RuntimeWarning`` says why and the eager path is used from then on.
            A sharded collector always runs the eager path. Each collector compiles its own
            copy of the step (dynamo's cache and recompile limit are per copy), freed with it.
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

    shift: Tensor
    shifted_mean: Tensor
    m2: Tensor
    deviations: Tensor
    _scratch: Tensor

    _state_name = "collector state"

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
        check_storage(self.layout.names, tensors, device)
        if device is None:
            devices = {t.device for t in tensors}
            if len(devices) > 1:
                raise ValueError(
                    f"the covered parameters live on several devices {sorted(map(str, devices))}; "
                    "pass device= to say where the statistics should live"
                )
            device = devices.pop()
        device = torch.device(device)
        self.max_rank = max_rank
        self.compiled = compiled
        # plan: which entries this rank holds (None: all of them); _slices: where they are in
        # the model's flat parameters, when the model holds more than them (DDP, shard=True)
        self.plan, self.process_group, fsdp = shard_plan(self.layout, tensors, shard, process_group)
        self._slices = self.plan.spans if self.plan is not None and not fsdp else None
        numels = self.layout.numels if self.plan is None else self.plan.numels
        self._numels = numels
        size = sum(numels)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self._fast = _mean_only(average, variance, max_rank, numels)
        # recorded with the state: statistics of one rule must not resume under another
        self._rule_name = ("none" if average is None else repr(average)) + (
            "" if self._fast is None else ", mean only"
        )
        for name in ("shift", "shifted_mean", "m2"):
            held = size if self._fast is None or name == "shifted_mean" else 0
            self.register_buffer(name, torch.zeros(held, **kw))
        self.averaging = (
            None if average is None or self._fast else average.bind(size, device, dtype)
        )
        self.register_buffer(
            "deviations", torch.zeros(max_rank, size, device=device, dtype=deviation_dtype)
        )
        # Work goes chunk by chunk through a cache-sized scratch buffer, so that each chunk of
        # θ − θ_1 is reused from cache and each ring slot is written once. With K > 0 a model
        # of up to 2^20 entries goes in one chunk: few large operations beat many small ones,
        # and its scratch is small next to the ring.
        chunk = size if max_rank > 0 and size <= _WHOLE_MAX else min(size, _CHUNK)
        self._chunks = plan_chunks(numels, chunk)
        chunk = 0 if self._fast is not None else chunk  # the mean-only path needs no scratch
        self._spans = [slice(o, o + m) for o, m in zip(_starts(numels), numels, strict=True)]
        self.register_buffer("_scratch", torch.empty(chunk, **kw), persistent=False)
        # Half-precision sums would overflow on ordinary weights: sum in at least float32.
        self._sum_dtypes = [torch.promote_types(d, torch.float32) for d in self.layout.dtypes]
        self._sum_dtype = torch.promote_types(dtype, torch.float32)
        self._param_dtypes = set(self.layout.dtypes)
        # parameters whose dtype reaches beyond the statistics' (float64 into float32): finite
        # values there may still overflow when cast, so they are range-checked on each collect
        top = torch.finfo(dtype).max
        self._wider = [i for i, d in enumerate(self.layout.dtypes) if torch.finfo(d).max > top]
        # parameters more precise than the statistics (float64 into float32): θ − θ_1 is taken
        # in their own dtype, before the cast, or the cast would round away the spread
        eps = torch.finfo(dtype).eps
        self._finer = any(torch.finfo(d).eps < eps for d in self.layout.dtypes)
        self._step: Callable[..., Tensor] | None = None  # compiled on first use, per collector
        self._bound: BoundParams | None = None
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
        flats = self._flats(self.__dict__["_model"] if model is None else model)
        direct = self._direct(flats)
        sharded = self.plan is not None
        if self._fast is not None:
            self._fast.collect(self.shifted_mean, flats, self._n + 1, direct)
            self._n += 1
            return
        if (
            self.averaging is None
            and self.compiled
            and not sharded
            and direct
            and self._n > 0
            and self._collect_compiled(flats)
        ):
            return
        n = self._n + 1
        slot = self.deviations[(n - 1) % self.max_rank] if self.max_rank else None
        whole = len(self._chunks) == 1
        if n == 1 or not whole or sharded:
            self._check_finite(flats)  # before any write: chunks update the state one by one
        if n == 1:
            self.layout.gather(flats, self.shift)
            if self._finer:  # θ_1 rounded into the shift: its residual starts the mean
                self._offset(flats, self.shift, self.shifted_mean, direct)
            if slot is not None:
                slot.zero_()  # θ_1 − θ̄_1 = 0; M2 stays 0
            self._n = n
            return
        for start, end, pieces in self._chunks:
            span = slice(start, end)
            x = self._scratch[: end - start]
            parts = flats if whole else [flats[i][a:b] for i, a, b in pieces]
            if whole and not self._finer:
                self.layout.gather(parts, x).sub_(self.shift)  # x = θ_n − θ_1
                if not sharded and not math.isfinite(x.sum(dtype=self._sum_dtype).item()):
                    self._check_finite(flats, x)  # names the culprits, or was a false alarm
            elif whole:
                self._offset(parts, self.shift, x, direct)  # x = θ_n − θ_1, in θ's dtype
                if not sharded and not math.isfinite(x.sum(dtype=self._sum_dtype).item()):
                    self._check_finite(flats, x)
            else:
                self._offset(parts, self.shift[span], x, direct)  # x = θ_n − θ_1
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

    def _direct(self, flats: list[Tensor]) -> bool:
        """Whether the parameters have the statistics' dtype and device (no cast, no copy)."""
        dtypes, device = self._param_dtypes, self.m2.device
        return dtypes == {self.m2.dtype} and all(t.device == device for t in flats)

    def _flats(self, model: nn.Module) -> list[Tensor]:
        """The covered parameters of ``model``, flat; the binding is reused while it is current."""
        bound = self._bound
        if bound is None or bound.model is not model or not bound.current():
            bound = self._bound = self.layout.bind(model)
            numels = self.layout.numels if self._slices is not None else self._numels
            if [f.numel() for f in bound.flats()] != list(numels):
                raise ValueError(
                    "the model's parameters are not sharded as at creation (an FSDP2 model "
                    "between forward and backward?); collect after optimizer.step()"
                )
        if self._slices is None:
            return bound.flats()
        return [f[a:b] for f, (a, b) in zip(bound.flats(), self._slices, strict=True)]

    def _collect_compiled(self, flats: list[Tensor]) -> bool:
        """The fused collect (``_step.fused_step``); ``False`` when the eager path must do it."""
        n = self._n + 1
        slot = self.deviations[(n - 1) % self.max_rank] if self.max_rank else None
        spans = self._spans
        kw: dict[str, Any] = {"device": self.m2.device, "dtype": self.m2.dtype}
        try:
            if self._step is None:
                self._step = compiled_step()
            finite = self._step(
                flats,
                [self.shift[span] for span in spans],
                [self.shifted_mean[span] for span in spans],
                [self.m2[span] for span in spans],
                None if slot is None else [slot[span] for span in spans],
                torch.tensor(1.0 / n, **kw),
                torch.tensor(n / (n - 1), **kw),
            )
        except Exception as exc:  # no compiler, unsupported platform: keep the eager path
            warnings.warn(
                f"compiled collect is unavailable ({type(exc).__name__}: {exc}); "
                "using the eager path",
                RuntimeWarning,
                stacklevel=3,
            )
            self.compiled = False
            return False
        if not bool(finite):
            return False  # state untouched; the eager path names the culprits or records it
        self._n = n
        return True

    def _offset(self, parts: list[Tensor], shift: Tensor, out: Tensor, direct: bool) -> None:
        """``out = θ − θ_1`` over one chunk.

        One pass per parameter piece when ``direct`` (same dtype and device as the statistics);
        per piece in the parameter's dtype when that is finer than the statistics'
        (:func:`_shifted`); else a gather (casting, copying across devices) then a subtraction.
        """
        if not direct and not self._finer:
            self.layout.gather(parts, out).sub_(shift)
            return
        pos = 0
        for part in parts:
            end = pos + part.numel()
            if direct:
                torch.sub(part, shift[pos:end], out=out[pos:end])
            else:
                out[pos:end].copy_(_shifted(part, shift[pos:end]))
            pos = end

    @property
    def mean(self) -> Tensor:
        """θ̄_n ``(P,)``, the mean of the iterates collected so far under the rule (a new tensor).

        Raises:
            ValueError: on the mean-only path, if an iterate with NaN/inf was collected.
        """
        if self._fast is None:
            return self.shift + self.shifted_mean
        if not bool(self.shifted_mean.isfinite().all()):
            raise ValueError(
                "the mean has NaN or inf: an iterate with NaN/inf was collected (variance=False "
                "does not check each collect); lower the learning rate, or use variance=True to "
                "have such iterates refused when collected"
            )
        return self.shifted_mean.clone()

    def _check_finite(self, flats: list[Tensor], written: Tensor | None = None) -> None:
        """Raise, before any write, if the iterate has NaN/inf or would overflow when stored.

        Besides NaN/inf in the parameters themselves, this checks what is written: parameters
        of a wider dtype than the statistics' (float64 into float32) must fit when cast, and
        ``written`` (``θ_n − θ_1`` in the statistics' dtype, when the caller has it) must be
        finite. A sharded collector sees only its rows, so the ranks agree through one
        ``all_reduce`` of one number: otherwise a NaN in one rank's rows would be recorded by
        the others, and the ranks' counts would part.
        """
        names = self.layout.names
        bad = nonfinite(names, flats, self._sum_dtypes, self.m2.device)
        huge = [] if bad else overflowing(names, flats, self._wider, self.m2.dtype)
        if not bad and not huge and written is not None:
            huge = nonfinite(names, [written[s] for s in self._spans], None, self.m2.device)
        if self.plan is not None:
            flag = torch.tensor(float(bool(bad or huge)), device=self.m2.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group)
            if flag.item() and not (bad or huge):
                raise ValueError(
                    f"iterate {self._n + 1} has NaN or inf in another rank's shard; nothing was "
                    "recorded on any rank. Lower the learning rate or skip this step."
                )
        if bad:
            raise ValueError(
                f"iterate {self._n + 1} has NaN or inf in {bad[:5]}; nothing was recorded. "
                "Lower the learning rate or skip this step."
            )
        if huge:
            raise ValueError(
                f"iterate {self._n + 1} has values in {huge[:5]} that overflow to inf in the "
                f"statistics' dtype {self.m2.dtype}; nothing was recorded. Collect with "
                "dtype=torch.float64, or keep the parameters in range."
            )

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
        if self.plan is not None:
            raise RuntimeError(
                "this collector is sharded: sharded_posterior() gives this rank's part, and "
                "sharded_posterior().full() the whole posterior on every rank (one all_gather)"
            )
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
        rank, cursor = self.rank, self._n % self.max_rank if self.max_rank else 0
        ring = self.deviations[:rank]
        # Oldest first; torch.cat already copies, so the ring is copied once either way.
        ordered = torch.cat([ring[cursor:], ring[:cursor]]) if self._n > self.max_rank else None
        if self._fast is not None:
            raise RuntimeError(
                "this collector keeps only the mean (variance=False); read collector.mean, or "
                "create it with variance=True for a posterior"
            )
        divisor = self._n if self.averaging is None else self.averaging.divisor(self._n)
        std = (self.m2 / divisor).clamp_min_(min_variance).sqrt_()
        mean = self.mean
        if not (bool(std.isfinite().all()) and bool(mean.isfinite().all())):
            # collect() refuses what overflows when written, except M2 = Σ (θ − θ̄)², whose
            # terms overflow float32 only for deviations beyond ~1e19: caught here, not hidden
            raise ValueError(
                f"the statistics overflowed their dtype {self.m2.dtype} (iterates that far "
                "apart, or min_variance that large, give inf σ); collect with "
                "dtype=torch.float64, or keep the parameters in range"
            )
        return mean, std, ring.clone() if ordered is None else ordered

    # -- persistence ------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"version": _io.VERSION, **self._meta()}

    def set_extra_state(self, state: Any) -> None:
        self._n = int(state["n"])  # checked (state_problem) before anything was copied

    def _state_problem(self, state_dict: dict[str, Any], prefix: str) -> str | None:
        mine = {name: getattr(self, name) for name in _STATE}
        return _io.state_problem(state_dict, prefix, mine, self._describe_mismatch)

    def save(self, path: _io.PathLike) -> None:
        """Write the collector's state to ``path`` (safetensors, atomic) to resume later.

        Raises:
            RuntimeError: if the collector is sharded (use :func:`swag.distributed.save`), as
                :meth:`posterior` does.
        """
        if self.plan is not None:
            raise RuntimeError(
                f"this collector holds only rank {self.plan.rank} of {self.plan.world}'s part of "
                "the statistics; save it with swag.distributed.save(collector, directory)"
            )
        self._check_savable()
        _io.save_file(
            path,
            "collector",
            {name: getattr(self, name) for name in _STATE},
            {k: str(v) for k, v in self._meta().items()},
        )

    def _check_savable(self) -> None:
        """Refuse to write files that would resume without this collector's averaging rule."""
        if self._rule_name != "none":
            raise ValueError(
                f"files do not yet record an averaging rule (average={self._rule_name}); "
                "checkpoint this collector with torch.save(collector.state_dict()) instead"
            )

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
        tensors, meta = _io.load_file(path, "collector")
        layout = ParamLayout.from_metadata(meta, "layout", path)
        dtype = _io.dtype_field(meta, "dtype", path)
        deviation_dtype = _io.dtype_field(meta, "deviation_dtype", path)
        k, n = _io.int_field(meta, "max_rank", path), _io.int_field(meta, "n", path)
        _io.expect_tensors(tensors, _STATE, path)
        state = {
            name: _io.tensor_field(
                tensors,
                name,
                path,
                (k, layout.size) if name == "deviations" else (layout.size,),
                (deviation_dtype if name == "deviations" else dtype,),
            )
            for name in _STATE
        }
        try:
            check_statistics_dtype(dtype)
        except ValueError as e:
            raise ValueError(f"{path} holds statistics that are no longer accepted: {e}") from None
        try:
            collector = cls(
                model,
                k,
                params=list(layout.names),
                device=device,
                dtype=dtype,
                deviation_dtype=deviation_dtype,
                compiled=compiled,
            )
        except ValueError as e:
            raise ValueError(f"{path} does not fit this model: {e}") from None
        problem = collector._describe_mismatch(meta)
        if problem:
            raise ValueError(f"{path} does not fit this model: {problem}")
        for name in _STATE:
            getattr(collector, name).copy_(state[name])
        collector._n = n
        return collector

    def _meta(self) -> dict[str, Any]:
        return {
            "n": self._n,
            "max_rank": self.max_rank,
            "layout": self.layout.to_json(),
            "dtype": str(self.m2.dtype).removeprefix("torch."),
            "deviation_dtype": str(self.deviations.dtype).removeprefix("torch."),
            "shard": "none" if self.plan is None else f"{self.plan.rank}/{self.plan.world}",
            # only with a rule: files (which refuse rules) keep the fields their loaders check
            **({} if self._rule_name == "none" else {"average": self._rule_name}),
        }

    def _describe_mismatch(self, meta: dict[str, str]) -> str | None:
        mine = {k: str(v) for k, v in self._meta().items()}
        if meta.get("shard", "none") != mine["shard"]:
            return (
                f"it is the statistics shard (rank/world) {meta.get('shard', 'none')}, this "
                f"collector holds {mine['shard']}; load it on that rank and world size, or "
                "reshard it with swag.distributed.save and swag.distributed.load_collector"
            )
        if meta.get("average", "none") != mine.get("average", "none"):
            return (
                f"it was collected with average={meta.get('average', 'none')}, this collector "
                f"has average={self._rule_name}; create it with the same rule"
            )
        for key in ("max_rank", "dtype", "deviation_dtype"):
            if meta.get(key) != mine[key]:
                return f"{key} is {meta.get(key)} in the saved state but {mine[key]} here"
        try:
            _io.int_field(meta, "n", "the saved state")
            saved = ParamLayout.from_metadata(meta, "layout", "the saved state")
        except ValueError as e:
            return str(e)
        diff = self.layout.mismatch(saved)
        return f"parameter layout differs: {diff}" if diff else None

    def extra_repr(self) -> str:
        shard = "" if self.plan is None else f", shard {self.plan.rank}/{self.plan.world}"
        return f"P={self.layout.size}, max_rank={self.max_rank}, n={self._n}{shard}"


def _shifted(theta: Tensor, shift: Tensor) -> Tensor:
    """``θ − θ_1`` taken in the wider of the two dtypes, then cast to ``shift``'s (same shape).

    A float64 parameter cast to float32 before the subtraction loses every digit of its spread
    below ``|θ| · 2⁻²⁴``: at ``|θ|/σ ≈ 10⁷`` the variance is off by tens of percent. The
    difference is small, so casting it afterwards keeps float32's relative precision.
    """
    wide = torch.promote_types(theta.dtype, shift.dtype)
    diff = theta.to(device=shift.device, dtype=wide) - shift.to(wide)
    return diff.to(shift.dtype)


def _starts(numels: tuple[int, ...]) -> list[int]:
    return [sum(numels[:i]) for i in range(len(numels))]


def _mean_only(
    average: AveragingRule | None, variance: bool, max_rank: int, numels: tuple[int, ...]
) -> MeanOnly | None:
    """Check ``average`` and ``variance``; the mean-only path when no variance is wanted."""
    if average is not None and not isinstance(average, AveragingRule):
        raise TypeError(
            f"average must be None or a rule from swag.averaging (EMA, PowerEMA, LAWA), "
            f"got {average!r}"
        )
    if not isinstance(variance, bool):
        raise TypeError(f"variance must be True or False, got {variance!r}")
    if variance:
        return None
    if max_rank:
        raise ValueError(
            f"variance=False keeps only the mean, so max_rank must be 0, got {max_rank}"
        )
    return MeanOnly(average, numels)
