"""``swag.save(callback, path)`` / ``swag.load(path)``: the framework callbacks' state (issue 19).

The state is what a callback needs to resume: the collector's statistics, the schedule
position and the counters. It goes through the one writer and validator (:mod:`swag._io`):
the round trip is exact, a run resumed from it ends with the posterior of an uninterrupted
run bit for bit, and a damaged or crafted file is refused naming the file and the field.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import swag
from swag.integrations import CallbackState
from swag.integrations._state import KIND
from swag.persistence import _io
from tests import callback_runs
from tests.callback_runs import assert_same_posterior, lightning_run, transformers_run
from tests.kinds import make_model

pytest.importorskip("lightning", reason="lightning is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")


def assert_same_state(a: CallbackState, b: CallbackState) -> None:
    assert type(a) is type(b) is CallbackState
    assert a.framework == b.framework and a.fields == b.fields
    assert a.collector["meta"] == b.collector["meta"]
    assert a.collector["tensors"].keys() == b.collector["tensors"].keys()
    for name, t in a.collector["tensors"].items():
        u = b.collector["tensors"][name]
        assert t.dtype == u.dtype and torch.equal(t, u), name


@functools.cache
def uninterrupted_hf_run() -> swag.SWAGPosterior:
    """The posterior of 12 steps of training without a stop (shared by the resume tests)."""
    posterior: swag.SWAGPosterior = transformers_run(steps=12).callback.posterior()
    return posterior


@pytest.mark.parametrize("run", [lightning_run, transformers_run], ids=["lightning", "hf"])
def test_round_trip_is_exact(run: Any, tmp_path: Path) -> None:
    cb = run(max_rank=2).callback
    swag.save(cb, tmp_path / "cb.safetensors")
    back = swag.load(tmp_path / "cb.safetensors")
    assert isinstance(back, CallbackState)
    assert_same_state(back, cb.callback_state())
    swag.save(back, tmp_path / "again.safetensors")  # a CallbackState saves as well
    assert_same_state(swag.load(tmp_path / "again.safetensors"), back)  # type: ignore[arg-type]
    # the statistics rebuild the callback's posterior on a bare model
    assert_same_posterior(back.to_collector(make_model()).posterior(), cb.posterior())


def test_lightning_resumed_from_the_saved_state_equals_uninterrupted(tmp_path: Path) -> None:
    whole = lightning_run(epochs=3)
    part = lightning_run(epochs=3, root=tmp_path, stop=1)
    swag.save(part.callback, tmp_path / "cb.safetensors")
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    # the Lightning checkpoint without the callback's own state: it comes from our file only
    data = torch.load(ckpt, weights_only=False)
    assert any("SWAGCallback" in key for key in data["callbacks"])
    data["callbacks"] = {k: v for k, v in data["callbacks"].items() if "SWAGCallback" not in k}
    torch.save(data, ckpt)
    state = swag.load(tmp_path / "cb.safetensors")
    resumed = lightning_run(epochs=3, root=tmp_path, ckpt=ckpt, state=state).callback
    assert whole.callback.collected == resumed.collected == 9  # steps 4..12
    assert_same_posterior(resumed.posterior(), whole.callback.posterior())
    # without the state the resumed callback starts empty: the state is what carried it
    assert lightning_run(epochs=3, root=tmp_path, ckpt=ckpt).callback.collected == 8


def test_transformers_resumed_from_the_saved_state_equals_uninterrupted(tmp_path: Path) -> None:
    whole = uninterrupted_hf_run()
    part = transformers_run(steps=12, folder=tmp_path, stop=4)
    swag.save(part.callback, tmp_path / "cb.safetensors")
    checkpoint = tmp_path / "checkpoint-4"
    (checkpoint / "swag_collector.safetensors").unlink()  # only our file carries the state
    state = swag.load(tmp_path / "cb.safetensors")
    resumed = transformers_run(steps=12, folder=tmp_path, resume=checkpoint, state=state)
    assert resumed.callback.collector.n == whole.n == 10  # steps 3..12
    assert_same_posterior(resumed.callback.posterior(), whole)


def test_the_file_beside_a_trainer_checkpoint_is_the_callback_state(tmp_path: Path) -> None:
    whole = uninterrupted_hf_run()
    transformers_run(steps=12, folder=tmp_path, stop=4)
    file = tmp_path / "checkpoint-4" / "swag_collector.safetensors"
    assert _io.read_kind(file) == KIND
    resumed = transformers_run(steps=12, folder=tmp_path, resume=tmp_path / "checkpoint-4")
    assert_same_posterior(resumed.callback.posterior(), whole)


def test_a_checkpoint_written_by_the_last_release_still_resumes(tmp_path: Path) -> None:
    """Before this change the file beside a Trainer checkpoint held the collector alone."""
    whole = uninterrupted_hf_run()
    transformers_run(steps=12, folder=tmp_path, stop=4)
    folder = tmp_path / "checkpoint-4"
    file, identity = folder / "swag_collector.safetensors", folder / "swag_collector.json"
    state = swag.load(file)
    assert isinstance(state, CallbackState)
    state.to_collector(make_model()).save(file)  # the old format: Collector.save
    record = json.loads(identity.read_text())
    record["collector_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    identity.write_text(json.dumps(record))
    assert _io.read_kind(file) == "collector"
    resumed = transformers_run(steps=12, folder=tmp_path, resume=folder)
    assert_same_posterior(resumed.callback.posterior(), whole)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CallbackState]:
    path = tmp_path_factory.mktemp("state") / "cb.safetensors"
    cb = lightning_run(max_rank=2).callback
    swag.save(cb, path)
    return path, cb.callback_state()


def test_a_flipped_byte_is_refused_naming_the_file(
    saved: tuple[Path, CallbackState], tmp_path: Path
) -> None:
    path, _ = saved
    blob = bytearray(path.read_bytes())
    for at in (len(blob) - 3, len(blob) // 2):
        damaged = bytearray(blob)
        damaged[at] ^= 0x10
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"bad\.safetensors"):
            swag.load(bad)
    bad.write_bytes(bytes(blob[:-40]))  # truncated
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        swag.load(bad)


def crafted(state: CallbackState, tmp_path: Path, **edits: Any) -> Path:
    """The state's file with ``edits`` to its metadata (JSON fields given as objects), sealed
    with a valid checksum, so that the field checks and not the checksum must refuse it."""
    tensors, meta = state.to_file()
    for key, value in edits.items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    path = tmp_path / "crafted.safetensors"
    _io.save_file(path, KIND, tensors, meta)
    return path


def test_crafted_fields_are_refused_naming_the_field(
    saved: tuple[Path, CallbackState], tmp_path: Path
) -> None:
    _, state = saved
    meta = state.collector["meta"]
    fields = state.fields
    cases: list[tuple[dict[str, Any], str]] = [
        ({"framework": "keras"}, "framework"),
        ({"callback": "{not json"}, "callback"),
        ({"callback": {**fields, "steps": -1}}, "steps"),
        ({"callback": {**fields, "start": [None]}}, "start"),
        ({"callback": {k: v for k, v in fields.items() if k != "swalr"}}, "swalr"),
        ({"collector": {**meta, "n": "3"}}, "'n'"),
        ({"collector": {**meta, "max_rank": -1}}, "max_rank"),
        ({"collector": {**meta, "dtype": "float64"}}, "dtype"),
        ({"collector": {**meta, "layout": "[]"}}, "layout"),
        ({"collector": {**meta, "format": "other"}}, "collector state"),
    ]
    for edits, words in cases:
        with pytest.raises(ValueError, match=r"crafted\.safetensors") as info:
            swag.load(crafted(state, tmp_path, **edits))
        assert words in str(info.value), (edits, str(info.value))
    # a tensor edited and the file resealed: the collector state's own seal refuses it
    tensors, file_meta = state.to_file()
    tensors = {**tensors, "m2": tensors["m2"] + 1.0}
    _io.save_file(tmp_path / "crafted.safetensors", KIND, tensors, file_meta)
    with pytest.raises(ValueError, match="checksum does not match"):
        swag.load(tmp_path / "crafted.safetensors")


def test_a_state_for_another_callback_or_model_is_refused(
    saved: tuple[Path, CallbackState],
) -> None:
    from swag.integrations.lightning import SWAGCallback as Lightning
    from swag.integrations.transformers import SWAGCallback as HF

    _, state = saved
    with pytest.raises(ValueError, match="saved by the lightning callback"):
        HF().load_callback_state(state)
    with pytest.raises(TypeError, match="CallbackState"):
        Lightning().load_callback_state(state.collector)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rank is 2 in the checkpoint but 4 here"):
        lightning_run(max_rank=4, state=state)
    with pytest.raises(RuntimeError, match="call fit"):
        Lightning().callback_state()
    with pytest.raises(ValueError, match="selected no parameters"):
        state.to_collector(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="average=none, this callback has average=EMA"):
        state.to_collector(make_model(), average=swag.EMA(0.9))


def test_reference_helper_selects_the_callbacks_steps() -> None:
    run = callback_runs.Run(None, [(s, torch.full((43,), float(s))) for s in range(1, 9)], 2)
    ref = callback_runs.reference(run, every=2)
    assert ref.n == 3  # steps 4, 6, 8
    torch.testing.assert_close(ref.mean, torch.full((43,), 6.0), rtol=0, atol=0)
