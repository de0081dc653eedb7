"""SWAG for Lightning: a callback that collects the iterates of ``Trainer.fit``.

Needs ``pip install 'swag-toolkit[lightning]'`` (Lightning 2.x, ``lightning.pytorch``).

Example:
    >>> callback = SWAGCallback(max_rank=10, start=0.5, collect_every="epoch")
    >>> callback.collected
    0
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.swa_utils import SWALR
from torch.utils.data import RandomSampler

from swag.core._initdoc import document_init
from swag.core.collector import Collector
from swag.core.distributed._shard import assemble
from swag.core.distributed.sharded import ShardedPosterior
from swag.core.layout import ParamSelector
from swag.core.point import PointPosterior
from swag.core.posterior import SWAGPosterior
from swag.evaluation.bn import default_input_fn, update_bn
from swag.family.averaging import AveragingRule
from swag.family.schedules import CollectEvery
from swag.integrations import _state
from swag.integrations._args import check_common, check_lightning_extras, missing_extra
from swag.integrations._lightning_checks import EPOCH, check_args, check_strategy, has_batchnorm

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.types import LRSchedulerConfig
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("lightning", "lightning") from exc

__all__ = ["SWAGCallback", "check_strategy"]

_INPUT_HINT = (
    "pass SWAGCallback(input_fn=...) mapping a batch to the model input (e.g. "
    "input_fn=lambda batch: batch['x'] for dict batches), or bn_update=False"
)


@document_init
class SWAGCallback(pl.Callback):
    """Collects SWAG statistics of the LightningModule while ``Trainer.fit`` trains it.

    The SWA phase begins at ``start``; from then on the callback calls
    :meth:`swag.Collector.collect` after every ``collect_every``-th optimiser step, or at the end
    of every epoch. With ``swa_lr`` the learning-rate schedule is replaced at ``start`` by
    torch's ``SWALR`` (annealed over ``anneal_steps`` optimiser steps, then constant). At the
    end of fit, with ``bn_update``, the SWA model's BatchNorm statistics are recomputed on the
    trainer's train dataloader. The collector's state rides in Lightning checkpoints, so
    ``Trainer.fit(ckpt_path=...)`` continues as if never stopped.

    Steps: every count of optimiser steps (``start`` as a fraction, ``collect_every=n``,
    ``anneal_steps``) is in one unit, the steps of the first optimiser
    (``trainer.optimizers[0]``). Under automatic optimisation that is ``trainer.global_step``.
    Under manual optimisation with several optimisers Lightning's ``global_step`` counts every
    optimiser's steps; the callback counts the first one's only, and takes the length of
    training (for fractions) as ``estimated_stepping_batches``, i.e. one step of the first
    optimiser per batch.

    Strategies: single device and ``ddp`` (statistics replicated, or split over the ranks with
    ``shard=True``) work, as does ``ModelParallelStrategy`` with FSDP2 (``fully_shard`` on the
    1-D data-parallel mesh; statistics sharded like the parameters). FSDP1, DeepSpeed, XLA and
    the spawn/fork launchers (``ddp_spawn``, ``ddp_notebook``) are refused with the fix.

    Args:
        max_rank: K, the deviations kept for the low-rank covariance (0: SWAG-Diag / SWA).
        start: when the SWA phase begins: an epoch index (int, 0-based), or a fraction in
            [0, 1) of training: of ``max_epochs`` when collecting per epoch, else of the
            trainer's ``estimated_stepping_batches`` (optimiser steps).
        collect_every: ``"epoch"`` (collect at the end of each epoch, as the SWAG paper does)
            or ``n`` (every n-th optimiser step of the phase).
        params: which parameters to cover, as for :class:`swag.Collector` (a name prefix,
            prefixes, or a predicate ``(name, param) -> bool``).
        swa_lr: switch to ``SWALR(swa_lr)`` at ``start`` (one optimiser only); ``None`` keeps
            the user's schedule, and warns (once) if that schedule changes the rate while
            the callback collects: SWAG assumes a constant rate in its phase.
        anneal_steps: optimiser steps (not epochs) over which ``SWALR`` anneals to ``swa_lr``
            (0: at once). torch's ``SWALR(anneal_epochs=)`` and Lightning's
            ``StochasticWeightAveraging(annealing_epochs=)`` count epochs; here the rate is
            stepped every optimiser step, so e.g. 2 epochs of 100 batches is
            ``anneal_steps=200``.
        anneal_strategy: ``"cos"`` or ``"linear"``, as for ``SWALR``.
        bn_update: recompute the SWA model's BatchNorm statistics at the end of fit.
        input_fn: maps a training batch to the model input for the BatchNorm refresh (default:
            a tensor as is, the first item of a tuple/list, a dict as keyword arguments).
        bn_batches: refresh on only this many batches (default: the whole train dataloader).
        shard: under ``ddp``, keep only this rank's 1/W of the statistics.
        dtype: the statistics' dtype (float32 default).
        device: where the statistics live (default: the parameters' device).
        average: how the collected iterates are weighted, passed to :class:`swag.Collector`:
            ``None`` (the equal SWA average), ``swag.EMA``, ``swag.PowerEMA`` or ``swag.LAWA``;
            ``posterior()`` and ``swa_model()`` then follow its weights. One collect per
            ``collect_every`` optimiser steps, so with ``accumulate_grad_batches`` the rule
            sees one iterate per optimiser step, never per micro-batch.
    """

    def __init__(
        self,
        max_rank: int = 20,
        *,
        start: int | float = 0.5,
        collect_every: int | Literal["epoch"] = "epoch",
        params: ParamSelector = None,
        swa_lr: float | None = None,
        anneal_steps: int = 0,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        bn_update: bool = True,
        input_fn: Callable[[Any], Any] | None = None,
        bn_batches: int | None = None,
        shard: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        average: AveragingRule | None = None,
    ) -> None:
        super().__init__()
        check_args(max_rank, start, collect_every, swa_lr, anneal_steps, anneal_strategy)
        check_lightning_extras(bn_update, input_fn, bn_batches, shard)
        check_common(params, dtype, device, average)
        self.max_rank, self.start, self.collect_every = max_rank, start, collect_every
        self.params, self.swa_lr, self.anneal_steps = params, swa_lr, anneal_steps
        self.anneal_strategy, self.bn_update, self.input_fn = anneal_strategy, bn_update, input_fn
        self.bn_batches, self.shard, self.dtype, self.device = bn_batches, shard, dtype, device
        self.average = average
        self._collector: Collector | None = None
        self._module: pl.LightningModule | None = None
        self._pending: dict[str, Any] | None = None
        self._swalr: SWALR | None = None
        self._swalr_state: dict[str, Any] | None = None
        self._user_schedulers: list[LRSchedulerConfig] | None = None
        self._swa: nn.Module | None = None
        self._in_phase = False
        self._fitting = False  # this fit's collector exists (on_fit_start ran)
        self._steps = 0  # optimiser steps taken in the SWA phase
        self._last_step = -1
        self._first_steps = 0  # steps of the first optimiser (manual optimisation)
        self._hook: Any = None
        self._phase_lrs: list[float] | None = None  # rates at the phase's start (swa_lr=None)
        self._bn_checked = False  # the first batch's BN-refresh input was checked this fit
        self._resumed = False  # this fit restored the callback from a checkpoint
        self._start_epoch: int | None = None
        self._start_step = 0

    # -- results ---------------------------------------------------------------------------

    @property
    def collector(self) -> Collector:
        """The :class:`swag.Collector` (built at the start of fit)."""
        if self._collector is None:
            raise RuntimeError("no collector yet: pass the callback to a Trainer and call fit()")
        return self._collector

    @property
    def collected(self) -> int:
        """How many iterates were collected so far."""
        return 0 if self._collector is None else self._collector.n

    def posterior(self, *, strip_prefix: str | None = None) -> SWAGPosterior:
        """The SWAG posterior of the collected iterates, for :func:`swag.predict`.

        Its parameter names are the LightningModule's (``net.0.weight`` for a module kept as
        ``self.net``). To apply it to the bare network, pass ``strip_prefix="net."``.
        Sharded (``shard=True`` or FSDP2), every rank must call it: it assembles the whole
        posterior on every rank (one ``all_gather``); :meth:`sharded_posterior` does not.

        Raises:
            ValueError: if a covered name does not start with ``strip_prefix``.
        """
        if strip_prefix is not None and not (isinstance(strip_prefix, str) and strip_prefix):
            raise TypeError(f"strip_prefix must be a non-empty str or None, got {strip_prefix!r}")
        c = self.collector
        post = c.posterior() if c.plan is None else c.sharded_posterior().full()
        if strip_prefix is None:
            return post
        return dataclasses.replace(post, layout=post.layout.strip_prefix(strip_prefix))

    def sharded_posterior(self) -> ShardedPosterior:
        """This rank's part of the posterior, for a sharded collector; no communication."""
        return self.collector.sharded_posterior()

    def swa_model(self) -> nn.Module:
        """A copy of the LightningModule holding the SWA mean θ̄.

        With ``bn_update`` its BatchNorm statistics were recomputed at the end of fit on the
        train dataloader; otherwise they are those of the last iterate. Sharded, every rank
        must call it (one ``all_gather`` of the mean).

        Raises:
            RuntimeError: before anything was collected, or for an FSDP2 model (write the mean
                into it in place with ``sharded_posterior().apply_(model)`` on every rank).
        """
        if self._swa is not None:
            return self._swa
        return self._build_swa_model()

    def _build_swa_model(self) -> nn.Module:
        c, module = self.collector, self._module
        assert module is not None
        if c.n == 0:
            raise RuntimeError("nothing collected yet: the SWA phase has not produced an iterate")
        if any(hasattr(p, "device_mesh") for p in module.parameters()):  # FSDP2: DTensors
            raise RuntimeError(
                "the model is sharded with FSDP2, so it cannot be copied whole; write the SWA "
                "mean into it in place with callback.sharded_posterior().apply_(model) on every "
                "rank (then refresh BatchNorm with swag.update_bn if it has any)"
            )
        mean = c.mean if c.plan is None else assemble(c.mean, c.plan, c.process_group)
        return PointPosterior(mean, c.layout).to_model(module)

    # -- Lightning hooks -------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy)
            self._fitting = False  # until on_fit_start builds this fit's collector

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._module, self._swa, self._in_phase, self._steps = pl_module, None, False, 0
        self._first_steps, self._phase_lrs, self._bn_checked = 0, None, False
        self._resumed = False
        self._fitting = True
        self._swalr = self._swalr_state = self._user_schedulers = None
        try:
            self._collector = Collector(
                pl_module,
                self.max_rank,
                params=self.params,
                shard=self.shard,
                dtype=self.dtype,
                device=self.device,
                average=self.average,
            )
        except ValueError as exc:
            raise ValueError(f"SWAGCallback cannot cover this model: {exc}") from None
        self._start_epoch, self._start_step = self._resolve_start(trainer)
        if self._pending is not None:  # Lightning restored the callback before fit started
            self._restore(self._pending)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        if not pl_module.automatic_optimization and trainer.optimizers:
            self._hook = trainer.optimizers[0].register_step_post_hook(self._count_step)
        self._last_step = self._steps_done(trainer)
        if self._resumed:
            _warn_if_order_will_not_resume(trainer.train_dataloader)

    def _count_step(self, *args: Any) -> None:
        self._first_steps += 1

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _steps_done(self, trainer: pl.Trainer) -> int:
        """Optimiser steps done so far, in the callback's unit: steps of the first optimiser.

        Under automatic optimisation (one optimiser) that is ``trainer.global_step``. Under
        manual optimisation Lightning's ``global_step`` counts the steps of every optimiser,
        so the callback counts ``trainer.optimizers[0]``'s own.
        """
        module = self._module
        if module is None or module.automatic_optimization:
            return trainer.global_step
        return self._first_steps

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hook()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._bn_checked:
            self._bn_checked = True
            if self.bn_update and has_batchnorm(pl_module):
                self._check_bn_input(pl_module, batch)
        if self._in_phase:
            self._check_rate(trainer)
            return
        if self._start_epoch is not None:
            self._in_phase = trainer.current_epoch >= self._start_epoch
        else:
            self._in_phase = self._steps_done(trainer) >= self._start_step
        if self._in_phase:
            self._switch_to_swalr(trainer)
            self._phase_lrs = _rates(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        done = self._steps_done(trainer)
        new, self._last_step = done - self._last_step, done
        if not (self._in_phase and new > 0 and isinstance(self.collect_every, int)):
            return
        # collect after phase steps every, 2·every, ... (once per batch, even if the first
        # optimiser stepped more than once in it)
        when = CollectEvery(self.collect_every, self.collect_every)
        before, self._steps = self._steps, self._steps + new
        if any(when(k) for k in range(before + 1, self._steps + 1)):
            self.collector.collect()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._in_phase and self.collect_every == EPOCH:
            self.collector.collect()

    def _check_rate(self, trainer: pl.Trainer) -> None:
        """With ``swa_lr=None``, warn once if the user's schedule moved the rate in the phase."""
        start = self._phase_lrs
        if self.swa_lr is None and start is not None and _rates(trainer) != start:
            self._phase_lrs = None  # once per fit
            warnings.warn(
                f"the learning rate changed during the SWA phase (from {start} to "
                f"{_rates(trainer)}) while SWAGCallback collects: swa_lr=None keeps your own "
                "schedule, but SWAG assumes iterates at a constant rate (docs/gotchas.md). Pass "
                "swa_lr= to switch to a constant rate at start, or make your schedule constant "
                "from there",
                UserWarning,
                stacklevel=2,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        if not self.bn_update or self.collected == 0 or not has_batchnorm(pl_module):
            return
        if any(hasattr(p, "device_mesh") for p in pl_module.parameters()):
            return  # FSDP2: swa_model() explains how to write the mean in place
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("bn_update=True needs the trainer's train dataloader at fit end")
        swa = self._build_swa_model()
        try:
            update_bn(loader, swa, num_batches=self.bn_batches, input_fn=self.input_fn)
        except TypeError as exc:  # e.g. forward() got an unexpected keyword argument 'y'
            raw = exc.__cause__ if isinstance(exc.__cause__, TypeError) else exc  # not update_bn's
            raise TypeError(f"{raw}; {_INPUT_HINT}") from exc
        self._swa = swa

    def _check_bn_input(self, module: pl.LightningModule, batch: Any) -> None:
        """Refuse, at the first batch, a batch the BatchNorm refresh at fit end could not feed.

        Only the forward's signature is checked (no forward pass): a dict batch must bind as
        keyword arguments, anything else as positional ones, as :func:`swag.update_bn` calls.
        """
        try:
            inputs = (self.input_fn or default_input_fn)(batch)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise TypeError(
                f"the first train batch gives no model input ({exc}); {_INPUT_HINT}"
            ) from exc
        try:
            signature = inspect.signature(module.forward)
        except (TypeError, ValueError):  # no signature to check (a builtin): the refresh will tell
            return
        try:
            if isinstance(inputs, Mapping):
                signature.bind(**inputs)
            else:
                signature.bind(*(inputs if isinstance(inputs, tuple) else (inputs,)))
        except TypeError as exc:
            kind = "model(**batch)" if isinstance(inputs, Mapping) else "model(input)"
            raise TypeError(
                f"bn_update=True refreshes BatchNorm at the end of fit by calling {kind} on the "
                f"train batches, but for the first batch {type(module).__name__}.forward "
                f"refuses that: {exc}; {_INPUT_HINT}"
            ) from None

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self._collector is None:
            return {}
        swalr = self._swalr.state_dict() if self._swalr is not None else self._swalr_state
        return {
            "collector": _state.collector_state(self._collector),
            "steps": self._steps,
            "first_optimizer_steps": self._first_steps,
            "start": [self._start_epoch, self._start_step],
            "swalr": swalr,
        }

    def callback_state(self) -> _state.CallbackState:
        """What this callback needs to resume (statistics, schedule position, counters), for
        ``swag.save(callback, path)``; sharded, every rank must call it (one ``all_gather``).

        Raises:
            RuntimeError: before fit has started (there is no collector yet).
        """
        self.collector  # noqa: B018 - raises, naming the fix, before fit
        state = self.state_dict()
        collector = state.pop("collector")
        return _state.CallbackState("lightning", collector, state)

    def load_callback_state(self, state: _state.CallbackState) -> None:
        """Resume from ``state`` (``swag.load`` of a file ``swag.save(callback, path)`` wrote)
        at the next ``Trainer.fit``, as from a Lightning checkpoint: pass the checkpoint of
        the same step as ``ckpt_path`` for the model and optimiser. A state inside that
        checkpoint is read after this one and wins.

        Raises:
            TypeError: if ``state`` is not a ``CallbackState``.
            ValueError: if it is another framework's, or damaged (naming what is wrong).
        """
        state = _state.check_callback_state(state, "lightning")
        self.load_state_dict({"collector": state.collector, **state.fields})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._pending = state_dict
        if self._fitting:  # strategies that restore callbacks after on_fit_start (FSDP2)
            self._restore(state_dict)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # SWALR's state travels in ours; the checkpoint keeps the user's own schedulers, so
        # that Lightning restores them into the schedulers configure_optimizers makes.
        if self._user_schedulers is not None:
            checkpoint["lr_schedulers"] = [c.scheduler.state_dict() for c in self._user_schedulers]

    def _restore(self, state: dict[str, Any]) -> None:
        problem = _state.lightning_fields_problem(state)
        if problem is None and "collector" not in state:
            problem = "it lacks the field 'collector'"
        if problem is not None:
            raise ValueError(
                f"the SWAGCallback state in the Lightning checkpoint is refused: {problem}"
            )
        _state.load_collector_state(self.collector, state["collector"], "the Lightning checkpoint")
        self._steps = int(state["steps"])
        self._first_steps = int(state.get("first_optimizer_steps", 0))
        # the start as resolved when the run began: a longer resumed run must not move it
        self._start_epoch, self._start_step = state["start"]
        self._swalr_state = state["swalr"]
        self._pending = None
        self._resumed = True

    # -- helpers ---------------------------------------------------------------------------

    def _resolve_start(self, trainer: pl.Trainer) -> tuple[int | None, int]:
        """(first epoch of the SWA phase, or None) and its first optimiser step otherwise."""
        if isinstance(self.start, int):
            return self.start, 0
        if self.collect_every == EPOCH:
            epochs = trainer.max_epochs
            if epochs is None or epochs < 1:
                raise ValueError(
                    f"start={self.start} is a fraction of max_epochs, but max_epochs={epochs}; "
                    "give start as an epoch (an int) or set Trainer(max_epochs=...)"
                )
            return int(self.start * epochs), 0
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                f"start={self.start} is a fraction of training, whose length is unknown; give "
                "start as an epoch (an int) or set Trainer(max_steps=...) or max_epochs"
            )
        return None, int(self.start * total)

    def _switch_to_swalr(self, trainer: pl.Trainer) -> None:
        """Replace the schedule by SWALR (restoring its state when resuming)."""
        if self._swalr is not None or self.swa_lr is None:
            return
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"swa_lr= switches one optimiser to SWALR, but there are {len(trainer.optimizers)}"
                "; use one optimiser, or leave swa_lr=None and schedule the rate yourself"
            )
        optimizer = trainer.optimizers[0]
        lrs = [group["lr"] for group in optimizer.param_groups]
        swalr = SWALR(optimizer, self.swa_lr, self.anneal_steps, self.anneal_strategy)
        if self._swalr_state is not None:  # resuming: the optimiser already holds the rates
            swalr.load_state_dict(self._swalr_state)
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
        self._user_schedulers = list(trainer.lr_scheduler_configs)
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(swalr, interval="step")]
        self._swalr = swalr


def _rates(trainer: pl.Trainer) -> list[float]:
    """The learning rate of every parameter group of every optimiser, in order."""
    return [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups]


def _warn_if_order_will_not_resume(loaders: object) -> None:
    """Warn when a train loader shuffles with a ``RandomSampler``, whose order a resume loses."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
        batch_sampler = getattr(loader, "batch_sampler", None)
        samplers = [getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)]
        if any(isinstance(s, RandomSampler) for s in samplers):
            warnings.warn(
                "resuming with a train DataLoader(shuffle=True): its RandomSampler draws each "
                "epoch's order from a generator state the checkpoint does not hold, so the "
                "resumed run sees other orders than an uninterrupted one and its posterior "
                "differs slightly. For an exact resume use "
                "DataLoader(dataset, sampler=swag.integrations.ResumableSampler(dataset, seed=0))",
                UserWarning,
                stacklevel=2,
            )
            return
