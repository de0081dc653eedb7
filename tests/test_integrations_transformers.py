"""SWAGCallback under a real transformers.Trainer: a tiny BERT built from a config (no download)."""

from __future__ import annotations

import os

# Nothing may be downloaded: the model comes from a config, with random weights. Set before
# transformers is imported, which is when huggingface_hub reads it.
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from torch import Tensor
from torch.utils.data import Dataset

import swag
from swag.integrations.transformers import (
    FILENAME,
    IDENTITY,
    SWAGCallback,
    model_inputs,
    predict,
)

HEAD = ("classifier.weight", "classifier.bias")


class Tokens(Dataset[dict[str, Tensor]]):
    """Synthetic sequence classification: is token 7 in the sequence?"""

    def __init__(self, n: int = 48, length: int = 8) -> None:
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(1, 20, (n, length), generator=g)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def bert() -> transformers.BertForSequenceClassification:
    config = transformers.BertConfig(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    transformers.set_seed(0)  # the Trainer seeds the global RNG too (its own convention)
    return transformers.BertForSequenceClassification(config)


class Recorder(transformers.TrainerCallback):
    """The head's parameters after every optimiser step: the float64 oracle's input."""

    def __init__(self) -> None:
        self.thetas: list[Tensor] = []

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any, **kw: Any) -> None:
        head = [model.classifier.weight, model.classifier.bias]
        self.thetas.append(torch.cat([p.detach().double().reshape(-1) for p in head]))


def train(
    out: Path,
    *callbacks: Any,
    stop: int | None = None,
    resume: bool | str = False,
    lr: float = 5e-3,
) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=lr,
        save_strategy="steps",
        save_steps=4,
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    model = bert()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(), callbacks=list(callbacks)
    )
    if stop is not None:
        trainer.add_callback(StopAt(stop))
    trainer.train(resume_from_checkpoint=resume or None)
    return model


class StopAt(transformers.TrainerCallback):
    """Ends training after optimiser step ``step``, as a preempted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        control.should_training_stop = state.global_step >= self.step


def test_head_statistics_match_float64_and_predict_on_dict_batches(tmp_path: Path) -> None:
    rec = Recorder()
    cb = SWAGCallback(max_rank=3, start=4, collect_every=2, params=lambda n, p: n in HEAD)
    model = train(tmp_path, rec, cb)
    post = cb.posterior()
    assert post.layout.names == HEAD and post.n == 4  # steps 6, 8, 10, 12
    x = torch.stack(rec.thetas[5::2]).numpy()
    running = np.cumsum(x, 0) / np.arange(1, len(x) + 1)[:, None]
    # float32 statistics of O(0.1) weights: agreement to ~1e-6
    np.testing.assert_allclose(post.mean.double(), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(post.std.double(), x.std(0), atol=1e-6)
    np.testing.assert_allclose(post.deviations.double(), (x - running)[-3:], atol=1e-6)
    for step in (4, 8, 12):  # the callback's state rides beside every Trainer checkpoint
        saved = swag.load(tmp_path / f"checkpoint-{step}" / FILENAME)
        assert isinstance(saved, swag.integrations.CallbackState)
        assert saved.to_collector(model).n == max(0, (step - 4) // 2)

    loader = torch.utils.data.DataLoader(Tokens(16), batch_size=8)
    g = torch.Generator().manual_seed(0)
    probs = predict(post, model, loader, num_samples=3, generator=g)
    assert probs.shape == (16, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))
    # at scale 0 every draw is the SWA mean on the head, the trained body elsewhere
    swa = cb.swa_model().eval()
    mean_probs = predict(post, model, loader, num_samples=1, scale=0.0)
    with torch.no_grad():
        ref = torch.cat([swa(**model_inputs(b)).logits.softmax(-1) for b in loader])
    torch.testing.assert_close(mean_probs, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swa.bert.pooler.dense.weight, model.bert.pooler.dense.weight)


def test_resume_from_a_trainer_checkpoint_restores_the_collector(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_rank": 3, "start": 0.25, "collect_every": 1, "params": "classifier"}
    whole = SWAGCallback(**kw)
    train(tmp_path / "a", whole)
    train(tmp_path / "b", SWAGCallback(**kw), stop=8)  # checkpoint-8 holds 5 collects (4..8)
    resumed = SWAGCallback(**kw)
    train(tmp_path / "b", resumed, resume=True)
    a, b = whole.posterior(), resumed.posterior()
    assert a.n == b.n == 9  # steps 4..12 (start int(0.25 · 12) = 3)
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_resume_without_the_collector_file_names_the_fix(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_rank": 2, "start": 2, "params": "classifier"}
    train(tmp_path, SWAGCallback(**kw), stop=4)
    with pytest.raises(ValueError, match="max_rank is 2 in the checkpoint but 4 here"):
        train(tmp_path, SWAGCallback(**(kw | {"max_rank": 4})), resume=True)
    (tmp_path / "checkpoint-4" / FILENAME).unlink()
    with pytest.raises(FileNotFoundError, match="resume_from="):
        train(tmp_path, SWAGCallback(**kw), resume=True)


@pytest.mark.slow
def test_resume_reads_the_resumed_checkpoint_never_a_same_named_one(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_rank": 2, "start": 2, "params": "classifier"}
    train(tmp_path / "a", SWAGCallback(**kw), stop=8)
    train(tmp_path / "b", SWAGCallback(**kw), stop=8, lr=2e-2)  # another run, same step names
    other = str(tmp_path / "b" / "checkpoint-8")
    # resuming b's checkpoint while writing into a: a/checkpoint-8 is another run's collector
    with pytest.raises(ValueError, match=r"a/checkpoint-8 belongs to another checkpoint"):
        train(tmp_path / "a", SWAGCallback(**kw), resume=other, lr=2e-2)
    resumed = SWAGCallback(**kw, resume_from=other)
    train(tmp_path / "a", resumed, resume=other, lr=2e-2)
    whole = SWAGCallback(**kw)
    train(tmp_path / "c", whole, lr=2e-2)
    a, b = whole.posterior(), resumed.posterior()
    assert a.n == b.n == 10  # steps 3..12
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the collector file swapped for another checkpoint's: its digest gives it away
    shutil.copy(tmp_path / "a/checkpoint-4" / FILENAME, tmp_path / "b/checkpoint-8" / FILENAME)
    with pytest.raises(ValueError, match="is not the collector file saved with checkpoint"):
        train(tmp_path / "a", SWAGCallback(**kw, resume_from=other), resume=other, lr=2e-2)
    # an identity record of another step
    record = json.loads((tmp_path / "a/checkpoint-4" / IDENTITY).read_text())
    (tmp_path / "b/checkpoint-8" / IDENTITY).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="saved at step 4, but the Trainer resumed at step 8"):
        train(tmp_path / "a", SWAGCallback(**kw, resume_from=other), resume=other, lr=2e-2)
