"""Tiny real runs of the framework callbacks, their iterates recorded, and plain references.

Each run trains the 4 → 5 → 3 ``Net`` of :mod:`tests.kinds` (same parameter names ``inp.*``,
``out.*``) for a few optimiser steps on 32 examples, under a real ``lightning.Trainer`` or
``transformers.Trainer`` on CPU, with the framework's callback and a recorder that copies the
parameters after every optimiser step. :func:`reference` feeds the recorded iterates the
callback's schedule selects to a plain :class:`swag.Collector`: the independent reference
for what the callback produced. A run takes about 0.5 s (Lightning) or 1.5 s (transformers),
after the frameworks are imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is ours

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import swag
from swag.averaging import AveragingRule
from tests.kinds import make_model

_G = torch.Generator().manual_seed(11)
X = torch.randn(32, 4, generator=_G)
Y = torch.randint(0, 3, (32,), generator=_G)
BATCH = 8  # 4 batches per epoch

# Lightning 2.6 calls torch's deprecated pytree LeafSpec, and advises worker processes and a
# log interval that a 4-batch CPU fit does not need.
_IGNORED = (
    (".*LeafSpec.* is deprecated", FutureWarning),
    ("The '(train|val)_dataloader' does not have many workers", UserWarning),
    ("The number of training batches", UserWarning),
    ("Checkpoint directory .* exists and is not empty", UserWarning),  # resuming into it
)


@dataclass
class Run:
    """A finished run: the callback, and every optimiser step's parameters.

    Attributes:
        callback: the framework's ``SWAGCallback`` after training.
        iterates: ``(step, θ (P,))`` after each optimiser step, in order (steps from 1).
        start: the optimiser step after which the callback collects.
    """

    callback: Any
    iterates: list[tuple[int, Tensor]]
    start: int


def _flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in _IGNORED:
            warnings.filterwarnings("ignore", message, category)
        yield


def lightning_run(
    *,
    epochs: int = 2,
    accumulate: int = 1,
    start: float = 0.25,
    every: int = 1,
    root: Path | None = None,
    stop: int | None = None,
    ckpt: Path | None = None,
    state: Any = None,
    **kw: Any,
) -> Run:
    """Lightning ``fit`` for ``epochs`` epochs of 4 batches, ``accumulate_grad_batches``.

    ``kw`` goes to ``SWAGCallback`` (``max_rank`` 3 unless given); ``start`` is a fraction of
    the optimiser steps, so the phase begins after step ``int(start · steps)``. With ``root``
    a checkpoint is written at each epoch's end (``root/checkpoints``); ``stop`` ends fit after
    that many epochs, ``ckpt`` resumes from a checkpoint, ``state`` is given to the callback's
    ``load_callback_state`` first.
    """
    import lightning.pytorch as pl

    from swag.integrations.lightning import SWAGCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            net = make_model()
            self.inp, self.out = net.inp, net.out

        def forward(self, x: Tensor) -> Tensor:
            return self.out(torch.tanh(self.inp(x)))

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.iterates: list[tuple[int, Tensor]] = []

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            if trainer.global_step > (self.iterates[-1][0] if self.iterates else 0):
                self.iterates.append((trainer.global_step, _flat(module)))

    class StopAfter(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
            trainer.should_stop = stop is not None and trainer.current_epoch + 1 >= stop

    kw.setdefault("max_rank", 3)
    callback = SWAGCallback(start=start, collect_every=every, bn_update=False, **kw)
    if state is not None:
        callback.load_callback_state(state)
    recorder = Recorder()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=BATCH)
    with _quiet():
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=root is not None,
            default_root_dir=root,
            accumulate_grad_batches=accumulate,
            callbacks=[callback, recorder, StopAfter()],
        )
        trainer.fit(Lit(), data, ckpt_path=ckpt)
    steps = epochs * (len(X) // BATCH) // accumulate
    if stop is None and ckpt is None:
        assert trainer.global_step == steps == len(recorder.iterates)
    return Run(callback, recorder.iterates, int(start * steps))


class HFNet(nn.Module):
    """``Net`` as a Trainer model: ``forward(x, labels)`` returns the loss and the logits."""

    def __init__(self) -> None:
        super().__init__()
        net = make_model()
        self.inp, self.out = net.inp, net.out

    def forward(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = self.out(torch.tanh(self.inp(x)))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def transformers_run(
    *,
    steps: int = 8,
    accumulate: int = 1,
    start: int = 2,
    every: int = 1,
    folder: Path | None = None,
    stop: int | None = None,
    resume: Path | None = None,
    state: Any = None,
    **kw: Any,
) -> Run:
    """``transformers.Trainer.train`` for ``steps`` optimiser steps (plain SGD, constant rate).

    ``kw`` goes to ``SWAGCallback`` (``max_rank`` 3 unless given). With ``folder`` a
    checkpoint is written every 4 steps; ``stop`` ends training after that step, ``resume``
    resumes from a checkpoint folder, ``state`` is given to ``load_callback_state`` first.
    """
    import transformers

    from swag.integrations.transformers import SWAGCallback

    class Recorder(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.iterates: list[tuple[int, Tensor]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.iterates.append((state.global_step, _flat(kw["model"])))
            control.should_training_stop = stop is not None and state.global_step >= stop

    kw.setdefault("max_rank", 3)
    callback = SWAGCallback(start=start, collect_every=every, **kw)
    if state is not None:
        callback.load_callback_state(state)
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=str(folder or tmp),
            max_steps=steps,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=accumulate,
            learning_rate=0.1,
            optim="sgd",
            lr_scheduler_type="constant",
            save_strategy="no" if folder is None else "steps",
            save_steps=4,
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        data = [{"x": x, "labels": y} for x, y in zip(X, Y, strict=True)]
        trainer = transformers.Trainer(
            model=HFNet(), args=args, train_dataset=data, callbacks=[callback, recorder]
        )
        with _quiet():
            trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    if stop is None and resume is None:
        assert trainer.state.global_step == steps == len(recorder.iterates)
    return Run(callback, recorder.iterates, start)


def reference(
    run: Run, *, every: int = 1, max_rank: int = 3, average: AveragingRule | None = None
) -> swag.Collector:
    """A plain Collector fed the iterates after steps ``start + every``, ``start + 2·every``..."""
    model = make_model()
    collector = swag.Collector(model, max_rank, average=average)
    for step, theta in run.iterates:
        past = step - run.start
        if past > 0 and past % every == 0:
            collector.layout.scatter(theta, model)
            collector.collect()
    return collector


def assert_same_posterior(got: swag.SWAGPosterior, ref: swag.SWAGPosterior) -> None:
    """Bit-equal: type, layout, n, mean, std, deviations."""
    assert type(got) is type(ref) and got.layout == ref.layout and got.n == ref.n
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
