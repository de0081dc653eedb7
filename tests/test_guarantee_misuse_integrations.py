"""Misuse table: every public argument of both callbacks, refused at construction by name.

A wrong type raises ``TypeError``, a wrong value ``ValueError``; the message names the argument.
Building a callback needs no Trainer, so the whole table runs in milliseconds.
"""

from __future__ import annotations

import inspect
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: nothing downloads

from typing import Any

import pytest
import torch

import swag

lightning = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

from swag.integrations import lightning as swag_lightning  # noqa: E402
from swag.integrations import transformers as swag_hf  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning")

NAN = float("nan")

# (argument, bad value, exception): shared by both callbacks
SHARED: list[tuple[str, object, type[Exception]]] = [
    ("max_rank", -1, ValueError),
    ("max_rank", 2.0, TypeError),
    ("max_rank", True, TypeError),
    ("max_rank", "20", TypeError),
    ("start", -1, ValueError),
    ("start", 1.5, ValueError),
    ("start", 15.0, ValueError),
    ("start", -0.1, ValueError),
    ("start", NAN, ValueError),
    ("start", float("inf"), ValueError),
    ("start", True, TypeError),
    ("start", "0.5", TypeError),
    ("start", None, TypeError),
    ("collect_every", 0, ValueError),
    ("collect_every", -2, ValueError),
    ("collect_every", 1.0, TypeError),
    ("collect_every", True, TypeError),
    ("params", 3, TypeError),
    ("params", ["head", 3], TypeError),
    ("params", {"head"}, TypeError),
    ("dtype", "float32", TypeError),
    ("dtype", torch.int64, ValueError),
    ("device", 1.5, TypeError),
    ("device", "not-a-device", ValueError),
    ("average", "ema", TypeError),
    ("average", 0.99, TypeError),
    ("average", lambda avg, p, n: p, TypeError),
]
LIGHTNING_ONLY: list[tuple[str, object, type[Exception]]] = [
    ("collect_every", "step", TypeError),
    ("swa_lr", -0.1, ValueError),
    ("swa_lr", 0.0, ValueError),
    ("swa_lr", float("inf"), ValueError),
    ("swa_lr", NAN, ValueError),
    ("swa_lr", True, TypeError),
    ("swa_lr", "0.1", TypeError),
    ("anneal_steps", -1, ValueError),
    ("anneal_steps", 2.5, TypeError),
    ("anneal_steps", True, TypeError),
    ("anneal_strategy", "step", ValueError),
    ("anneal_strategy", None, ValueError),
    ("bn_update", "yes", TypeError),
    ("bn_update", 1, TypeError),
    ("input_fn", "x", TypeError),
    ("bn_batches", 0, ValueError),
    ("bn_batches", 2.0, TypeError),
    ("shard", "True", TypeError),
    ("shard", None, TypeError),
]
HF_ONLY: list[tuple[str, object, type[Exception]]] = [
    ("collect_every", "epoch", TypeError),  # the Hugging Face callback counts steps only
    ("resume_from", 3, TypeError),
    ("resume_from", ["checkpoint-8"], TypeError),
]
CASES = [("lightning", *c) for c in SHARED + LIGHTNING_ONLY] + [
    ("transformers", *c) for c in SHARED + HF_ONLY
]


@pytest.mark.parametrize(("framework", "name", "value", "error"), CASES)
def test_a_bad_argument_is_refused_by_name(
    framework: str, name: str, value: Any, error: type[Exception]
) -> None:
    module = swag_lightning if framework == "lightning" else swag_hf
    with pytest.raises(error) as info:
        module.SWAGCallback(**{name: value})
    assert type(info.value) is error  # exactly, not a subclass
    assert name in str(info.value), str(info.value)


def test_a_float_start_that_means_an_epoch_gets_the_int_hint() -> None:
    with pytest.raises(ValueError, match="for epoch 15 pass the int start=15"):
        swag_lightning.SWAGCallback(start=15.0)
    with pytest.raises(ValueError, match="for step 100 pass the int start=100"):
        swag_hf.SWAGCallback(start=100.0)


def test_good_arguments_are_accepted() -> None:
    swag_lightning.SWAGCallback(
        3,
        start=0,
        collect_every=2,
        params=["body", "head"],
        swa_lr=0.1,
        anneal_steps=5,
        anneal_strategy="linear",
        bn_update=False,
        input_fn=lambda b: b,
        bn_batches=4,
        shard=True,
        dtype=torch.float64,
        device="cpu",
        average=swag.LAWA(4),
    )
    swag_hf.SWAGCallback(
        0,
        start=0.0,
        params=lambda n, p: True,
        resume_from="out/checkpoint-4",
        average=swag.PowerEMA(sigma_rel=0.1),
    )
    for rule in (None, swag.EMA(0.99, warmup=True)):
        assert swag_hf.SWAGCallback(average=rule).average == rule


def test_post_hoc_ema_as_average_names_what_to_do() -> None:
    with pytest.raises(TypeError, match="PostHocEMA keeps its own snapshots"):
        swag_lightning.SWAGCallback(average=swag.PostHocEMA(torch.nn.Linear(2, 1)))


@pytest.mark.parametrize("module", [swag_lightning, swag_hf])
def test_init_docstring_lists_every_argument(module: Any) -> None:
    doc = module.SWAGCallback.__init__.__doc__  # what help(SWAGCallback.__init__) shows
    params = [p for p in inspect.signature(module.SWAGCallback.__init__).parameters if p != "self"]
    assert doc is not None and all(f"    {p}: " in doc for p in params), params


@pytest.mark.parametrize("value", [3, "", ["net."]])
def test_strip_prefix_is_checked_before_anything_else(value: object) -> None:
    with pytest.raises(TypeError, match="strip_prefix must be a non-empty str"):
        swag_lightning.SWAGCallback().posterior(strip_prefix=value)  # type: ignore[arg-type]
