"""SWAG for the Hugging Face ``Trainer``: a callback, and prediction on the model's dict batches.

Needs ``pip install 'swag-toolkit[transformers]'``.

Example:
    >>> callback = SWAGCallback(max_rank=10, start=100, collect_every=10, params="classifier")
    >>> model_inputs({"input_ids": 1, "attention_mask": 2, "labels": 3})
    {'input_ids': 1, 'attention_mask': 2}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from swag.core._checks import check_count
from swag.core._initdoc import document_init
from swag.core._posterior_base import Posterior
from swag.core.collector import Collector
from swag.core.layout import ParamLayout, ParamSelector
from swag.core.posterior import SWAGPosterior
from swag.evaluation._options import legacy_keywords
from swag.evaluation.predict import Classification, PredictOptions
from swag.evaluation.predict import predict as swag_predict
from swag.family.averaging import AveragingRule
from swag.integrations import _state
from swag.integrations._args import (
    check_common,
    check_path,
    check_rank_and_start,
    missing_extra,
)
from swag.persistence import _io

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("transformers", "transformers") from exc

__all__ = ["FILENAME", "IDENTITY", "SWAGCallback", "logits", "model_inputs", "predict"]

FILENAME = "swag_collector.safetensors"
"""The callback's state (``swag.save(callback, ...)``) inside each Trainer checkpoint folder
(``checkpoint-<step>/``); read it with ``swag.load``. Files written by earlier releases held the
collector alone (``swag.Collector.load``); resuming still reads them."""

IDENTITY = "swag_collector.json"
"""Beside :data:`FILENAME`: the step, and SHA-256 digests of the covered weights and of the
collector file, which tie the collector to the checkpoint it was saved with."""

_IDENTITY_FORMAT = "swag-collector-identity"
_IDENTITY_KEYS = ("format", "version", "step", "weights_sha256", "collector_sha256")

_LABEL_KEYS = ("labels", "label", "label_ids")


@document_init
class SWAGCallback(TrainerCallback):
    """Collects SWAG statistics of the model a ``transformers.Trainer`` trains.

    After optimiser step ``start`` the callback calls :meth:`swag.Collector.collect` every
    ``collect_every`` optimiser steps (steps ``start + collect_every``, ``start + 2 ·
    collect_every``, ...; gradient-accumulation micro-steps do not count). At every Trainer
    checkpoint it writes the collector beside the model, as ``checkpoint-<step>/`` + ``FILENAME``
    (safetensors), with :data:`IDENTITY` beside it. ``trainer.train(resume_from_checkpoint=...)``
    reads it back, so the resumed run collects exactly what an uninterrupted one would. The
    collector is read from ``resume_from``, else from ``<output_dir>/checkpoint-<step>``; it is
    used only if its identity record says it was saved with the checkpoint being resumed (same
    step, same covered weights as the Trainer just loaded, same collector bytes), else resuming
    is refused with a message naming the folder: a same-named checkpoint of another run is
    never read silently.

    Under DDP (``torchrun``) every rank keeps the same statistics and the main process writes
    them. DeepSpeed and FSDP are refused: they shard the parameters their own way.

    Args:
        max_rank: K, the deviations kept for the low-rank covariance (0: SWAG-Diag / SWA).
        start: the optimiser step after which collection begins (an int), or a fraction in
            [0, 1) of the Trainer's ``max_steps``.
        collect_every: collect every n-th optimiser step.
        params: which parameters to cover, as for :class:`swag.Collector`: a name prefix
            (``"classifier"``), prefixes, or a predicate ``(name, param) -> bool`` (e.g.
            ``lambda name, p: "lora_" in name`` for LoRA adapters).
        dtype: the statistics' dtype (float32 default).
        device: where the statistics live (default: the parameters' device).
        resume_from: the checkpoint folder to read the collector from when the Trainer resumes
            (default: ``<output_dir>/checkpoint-<step>``, where the Trainer writes them).
        average: how the collected iterates are weighted, passed to :class:`swag.Collector`:
            ``None`` (the equal SWA average), ``swag.EMA``, ``swag.PowerEMA`` or ``swag.LAWA``;
            ``posterior()`` and ``swa_model()`` then follow its weights. The callback collects
            after optimiser steps, so with ``gradient_accumulation_steps`` the rule sees one
            iterate per optimiser step, never per micro-batch.
    """

    def __init__(
        self,
        max_rank: int = 20,
        *,
        start: int | float = 0.5,
        collect_every: int = 1,
        params: ParamSelector = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        average: AveragingRule | None = None,
    ) -> None:
        check_rank_and_start(max_rank, start, "step")
        check_count(collect_every, "collect_every")
        check_common(params, dtype, device, average)
        check_path(resume_from, "resume_from")
        self.max_rank, self.start, self.collect_every = max_rank, start, collect_every
        self.params, self.dtype, self.device = params, dtype, device
        self.resume_from, self.average = resume_from, average
        self._collector: Collector | None = None
        self._model: nn.Module | None = None
        self._start_step = 0
        self._pending: _state.CallbackState | None = None

    @property
    def collector(self) -> Collector:
        """The :class:`swag.Collector` (built when training begins)."""
        if self._collector is None:
            raise RuntimeError("no collector yet: pass the callback to a Trainer and call train()")
        return self._collector

    def callback_state(self) -> _state.CallbackState:
        """What this callback needs to resume (statistics and where collection began), for
        ``swag.save(callback, path)``; the callback writes it beside every checkpoint itself.

        Raises:
            RuntimeError: before training has begun (there is no collector yet).
        """
        collector = _state.collector_state(self.collector)
        return _state.CallbackState("transformers", collector, {"start_step": self._start_step})

    def load_callback_state(self, state: _state.CallbackState) -> None:
        """Resume from ``state`` (``swag.load`` of a file ``swag.save(callback, path)`` wrote)
        at the next ``Trainer.train(resume_from_checkpoint=...)`` of the same step, instead of
        the file beside that checkpoint.

        Raises:
            TypeError: if ``state`` is not a ``CallbackState``.
            ValueError: if it is another framework's, or damaged (naming what is wrong).
        """
        self._pending = _state.check_callback_state(state, "transformers")

    def posterior(self) -> SWAGPosterior:
        """The SWAG posterior of the collected iterates; use it with :func:`predict`."""
        return self.collector.posterior()

    @property
    def model(self) -> nn.Module:
        """The model the Trainer trains (known when training begins)."""
        if self._model is None:
            raise RuntimeError("no model yet: pass the callback to a Trainer and call train()")
        return self._model

    def swa_model(self) -> nn.Module:
        """A copy of the model holding the SWA mean θ̄ on the covered parameters."""
        return self.posterior().to_model(self.model)

    # -- Trainer events --------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ValueError(
                "SWAGCallback does not support DeepSpeed or FSDP, which shard the parameters; "
                "train with plain DDP (torchrun), or use swag.Collector(shard=True) with FSDP2 "
                "in your own loop"
            )
        if model is None:
            raise RuntimeError("the Trainer passed no model to on_train_begin")
        self._model = model
        self._start_step = (
            self.start if isinstance(self.start, int) else int(self.start * state.max_steps)
        )
        fresh = Collector(
            model,
            self.max_rank,
            params=self.params,
            dtype=self.dtype,
            device=self.device,
            average=self.average,
        )
        self._collector = fresh
        if self._pending is not None:  # given with load_callback_state
            self._load(self._pending, "the callback state given to load_callback_state")
            self._pending = None
        elif state.global_step > 0:  # resuming from a checkpoint
            self._resume(args, state, model, fresh)

    def _load(self, state: _state.CallbackState, where: str) -> None:
        """Put ``state`` into the collector, and take its start step."""
        _state.load_collector_state(self.collector, state.collector, where)
        self._start_step = state.fields["start_step"]

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        past = state.global_step - self._start_step
        if past > 0 and past % self.collect_every == 0:
            self.collector.collect()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        folder = _checkpoint(args, state.global_step)
        if not folder.is_dir():
            raise RuntimeError(f"the Trainer saved a checkpoint, but {folder} is not a folder")
        _io.save_file(folder / FILENAME, _state.KIND, *self.callback_state().to_file())
        identity = {
            "format": _IDENTITY_FORMAT,
            "version": 1,
            "step": state.global_step,
            "weights_sha256": _weights_digest(self.model, self.collector.layout),
            "collector_sha256": _file_digest(folder / FILENAME),
        }
        (folder / IDENTITY).write_text(json.dumps(identity, indent=1))

    def _resume(
        self, args: TrainingArguments, state: TrainerState, model: nn.Module, fresh: Collector
    ) -> None:
        step = state.global_step
        folder = Path(self.resume_from) if self.resume_from else _checkpoint(args, step)
        file = folder / FILENAME
        if not file.is_file():
            if step <= self._start_step:
                return  # nothing was collected before the checkpoint
            raise FileNotFoundError(
                f"resuming at step {step}, after collection began, but {file} does not exist; "
                "pass SWAGCallback(resume_from=<the checkpoint folder>)"
            )
        _check_identity(folder, step, model, fresh.layout)
        if _io.read_kind(file) == _state.KIND:
            blob = _io.load_file(file, _state.KIND, fresh.m2.device)
            saved = _state.CallbackState.from_file(*blob, file)
            self._load(_state.check_callback_state(saved, "transformers"), str(file))
            return
        # a file of an older swag: the collector alone, which holds no averaging rule
        loaded = Collector.load(file, model, device=fresh.m2.device)
        problem = fresh.layout.mismatch(loaded.layout)
        if problem is None and self.average is not None:
            problem = f"it was collected with average=none, this callback has {self.average!r}"
        if problem is None and loaded.max_rank != fresh.max_rank:
            problem = f"max_rank is {loaded.max_rank} there but {fresh.max_rank} here"
        if problem is None and loaded.m2.dtype != fresh.m2.dtype:
            problem = f"dtype is {loaded.m2.dtype} there but {fresh.m2.dtype} here"
        if problem:
            raise ValueError(
                f"{file} does not fit this callback: {problem}. Build the callback with the "
                "max_rank, params= and dtype of the run that saved it"
            )
        self._collector = loaded


def _weights_digest(model: nn.Module, layout: ParamLayout) -> str:
    """SHA-256 over ``model``'s parameters covered by ``layout`` (names, dtypes, shapes, bytes)."""
    pieces = layout.resolve(model)
    return _io.checksum({n: p.cpu() for n, p in zip(layout.names, pieces, strict=True)}, {})


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_identity(path: Path) -> dict[str, Any]:
    """The identity record ``path`` (:data:`IDENTITY`) holds, its fields checked.

    Raises:
        ValueError: naming the file, when it is missing, not JSON, or a field is absent or of
            the wrong type.
    """
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist, so the collector beside it cannot be tied to its "
            "checkpoint (it was written by an older swag, or removed)"
        )
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path} is not a swag identity record ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != _IDENTITY_FORMAT:
        raise ValueError(f"{path} is not a swag identity record (format)")
    for key in _IDENTITY_KEYS:
        if key not in record:
            raise ValueError(f"{path} lacks the field {key!r}; the file is damaged")
    if record["version"] != 1:
        raise ValueError(f"{path} has version {record['version']!r}; this swag reads version 1")
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: step must be an int >= 0, got {step!r}")
    for key in ("weights_sha256", "collector_sha256"):
        digest = record[key]
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set(_HEX)):
            raise ValueError(f"{path}: {key} must be 64 hex digits, got {digest!r}")
    return record


_HEX = "0123456789abcdef"


def _check_identity(folder: Path, step: int, model: nn.Module, layout: ParamLayout) -> None:
    """Refuse the collector in ``folder`` unless it was saved with the checkpoint resumed now.

    The Trainer has loaded the resumed checkpoint's weights before ``on_train_begin``: they must
    be the weights the collector was saved with, at the same step, and the collector file must
    be the one written then.
    """
    record = _read_identity(folder / IDENTITY)
    fix = (
        "pass SWAGCallback(resume_from=<the folder given to resume_from_checkpoint>) so that "
        "the collector is read from the checkpoint being resumed"
    )
    if record["step"] != step:
        raise ValueError(
            f"the collector in {folder} was saved at step {record['step']}, but the Trainer "
            f"resumed at step {step} from another checkpoint; {fix}"
        )
    if _file_digest(folder / FILENAME) != record["collector_sha256"]:
        raise ValueError(
            f"{folder / FILENAME} is not the collector file saved with checkpoint {folder} "
            f"(its SHA-256 differs from the one in {IDENTITY}): it was changed or damaged"
        )
    if _weights_digest(model, layout) != record["weights_sha256"]:
        raise ValueError(
            f"the collector in {folder} belongs to another checkpoint than the one the Trainer "
            f"resumed from: the model's weights at step {step} differ from those saved with "
            f"it; {fix}"
        )


def _checkpoint(args: TrainingArguments, step: int) -> Path:
    """The folder the Trainer writes its checkpoint of ``step`` to."""
    if args.output_dir is None:
        raise RuntimeError("the Trainer has no output_dir, so it writes no checkpoints")
    return Path(args.output_dir) / f"checkpoint-{step}"


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A Trainer batch without its labels: the keyword arguments of the model's forward."""
    return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}


def logits(output: Any) -> Tensor:
    """The logits of a model output (``output.logits``, or the first item of a tuple)."""
    out = getattr(output, "logits", None)
    if out is None and isinstance(output, tuple | list):
        out = output[0]
    if not isinstance(out, Tensor):
        raise ValueError(
            f"cannot find logits in a {type(output).__name__}; pass output_fn= to swag.predict"
        )
    return out


@legacy_keywords(
    "bn_loader", "bn_batches", "input_fn", "output_fn", "device", "reduce", "progress",
    "mc_dropout", "diagonal",
)  # fmt: skip
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = None,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    head: Classification | None = None,
    options: PredictOptions | None = None,
) -> Tensor:
    """:func:`swag.predict` on a Hugging Face model's dict batches.

    The same arguments, with two defaults for Hugging Face models: labels are dropped from
    each batch (``options.input_fn`` defaults to :func:`model_inputs`) and the logits are taken
    from the output (``head.output_fn`` defaults to :func:`logits`); everything else is passed
    to :func:`swag.predict` unchanged. Returns the averaged class probabilities ``(N, ..., C)``.
    """
    head = head or Classification()
    options = options or PredictOptions()
    if isinstance(head, Classification) and head.output_fn is None:
        head = Classification(output_fn=logits)
    if isinstance(options, PredictOptions) and options.input_fn is None:
        options = dataclasses.replace(options, input_fn=model_inputs)
    out: Tensor = swag_predict(
        posterior, model, loader, num_samples=num_samples, scale=scale, generator=generator,
        head=head, options=options,
    )  # fmt: skip
    return out
