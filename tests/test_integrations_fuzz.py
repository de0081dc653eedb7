"""Integration checkpoints, damaged on purpose: each is refused with a clear error, or is exact.

The Lightning callback keeps the collector in its checkpoint state (a dict of meta and tensors,
:func:`swag.integrations._state.collector_state`); the Hugging Face callback writes the collector
file (fuzzed in ``test_guarantee_file_fuzz.py``) and an identity record beside it. Here the state is
truncated, bit-flipped, given missing, extra and ill-typed fields, foreign dtypes, NaN and negative
variances, then re-sealed with a valid checksum where the field checks (not the checksum) must catch
the edit. Each case must raise ``ValueError`` naming where the state came from, and leave the
collector it was loaded into unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: nothing downloads

import pytest
import torch
from torch import Tensor, nn

import swag
from swag.integrations import _state
from swag.integrations.transformers import _read_identity
from swag.persistence import _io
from tests.reference import random_walk

SEED = 4
WHERE = "the test checkpoint"


def collected() -> tuple[nn.Module, swag.Collector]:
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    collector = swag.Collector(model, max_rank=2)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(3):
        random_walk(model, 1, g)
        collector.collect()
    return model, collector


MODEL, SOURCE = collected()
STATE = _state.collector_state(SOURCE)


def stats(c: swag.Collector) -> list[Tensor]:
    return [getattr(c, k).clone() for k in ("shift", "shifted_mean", "m2", "deviations")]


def reseal(state: dict[str, Any]) -> dict[str, Any]:
    """A crafted state: a valid checksum over edited contents (if the contents allow one)."""
    meta = {k: v for k, v in state["meta"].items() if k != _state.CHECKSUM}
    tensors = state["tensors"]
    try:
        seal = _io.checksum({k: t.cpu() for k, t in tensors.items()}, meta)
    except (TypeError, ValueError, AttributeError):
        return state
    return {**state, "meta": meta | {_state.CHECKSUM: seal}}


def outcome(state: object) -> str:
    """Load ``state`` into a fresh collector: "" when exact, else the refusal's message."""
    target = swag.Collector(MODEL, max_rank=2)
    before = stats(target)
    try:
        _state.load_collector_state(target, state, WHERE)  # type: ignore[arg-type]
    except ValueError as e:
        assert WHERE in str(e), str(e)
        assert all(map(torch.equal, before, stats(target)))  # nothing half-loaded
        return str(e)
    assert target.n == SOURCE.n
    assert all(map(torch.equal, stats(SOURCE), stats(target))), "loaded a different collector"
    return ""


def test_the_clean_state_loads_exactly() -> None:
    assert outcome(copy.deepcopy(STATE)) == ""
    old = copy.deepcopy(STATE)  # states written before the checksum existed still load
    del old["meta"][_state.CHECKSUM]
    assert outcome(old) == ""


GARBAGE: list[object] = [None, -1, 1.5, True, "", "abc", "3", [], {}, [1], 10**30, float("nan")]


def meta_edits() -> Iterator[tuple[str, dict[str, Any]]]:
    meta = STATE["meta"]
    for key in sorted(set(meta) - {_state.CHECKSUM}):
        rest = {k: v for k, v in meta.items() if k != key}
        yield key, rest
        for value in [*GARBAGE, '[["0.weight", [2, 3], "float32"]]', "float64", "int64"]:
            if value != meta[key]:
                yield key, {**rest, key: value}


def test_meta_edits_are_refused_naming_the_field() -> None:
    cases = 0
    for key, meta in meta_edits():
        message = outcome(reseal({"meta": meta, "tensors": dict(STATE["tensors"])}))
        assert message, f"{key}: an edited field was accepted"
        named = key in message or (key == "format" and "no swag collector state" in message)
        named = named or (key == "n" and "'n'" in message)
        assert named or "layout" in message or "dtype" in message, f"{key}: {message}"
        cases += 1
    assert cases > 6 * 10


FOREIGN = [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]


def tensor_edits() -> Iterator[dict[str, Any]]:
    """Each tensor removed, cast, cut short, given a dimension; NaN, inf, negative m2; extra."""
    tensors = STATE["tensors"]
    for name, t in sorted(tensors.items()):
        rest = {k: v for k, v in tensors.items() if k != name}
        yield rest
        for dtype in FOREIGN:
            yield {**rest, name: t.to(dtype)}
        yield {**rest, name: t.reshape(-1)[:-1].clone()}
        yield {**rest, name: t.unsqueeze(0).clone()}
        yield {**rest, name: t.tolist()}
        for bad in (float("nan"), float("inf")):
            damaged = t.clone()
            damaged.view(-1)[0] = bad
            yield {**rest, name: damaged}
    yield {**tensors, "m2": -tensors["m2"] - 1}
    yield {**tensors, "extra": torch.zeros(3)}


def test_tensor_edits_are_refused_even_with_a_valid_checksum() -> None:
    messages = [
        outcome(reseal({"meta": dict(STATE["meta"]), "tensors": e})) for e in tensor_edits()
    ]
    assert len(messages) > 4 * 12 and all(messages)


def test_every_bit_flip_in_the_tensors_is_refused() -> None:
    rng = random.Random(SEED)
    refused = 0
    for name, t in sorted(STATE["tensors"].items()):
        bits = t.clone().view(torch.int32)  # float32 statistics
        for pos in range(bits.numel()):
            flipped = bits.clone()
            flipped.view(-1)[pos] ^= 1 << rng.randrange(32)
            tensors = {**STATE["tensors"], name: flipped.view(torch.float32)}
            refused += bool(outcome({"meta": dict(STATE["meta"]), "tensors": tensors}))
    total = sum(t.numel() for t in STATE["tensors"].values())
    assert refused == total  # the checksum catches each one, NaN-making or not


def test_truncated_and_ill_typed_states_are_refused() -> None:
    cases: list[object] = [None, [], "state", {"meta": STATE["meta"]}, {"tensors": {}}]
    cases += [{"meta": [], "tensors": STATE["tensors"]}, {"meta": STATE["meta"], "tensors": []}]
    for case in cases:
        assert outcome(case)


# -- the Lightning callback's own fields --------------------------------------------------------


def test_lightning_callback_fields_are_checked_before_anything_loads() -> None:
    _callback_state_problem = _state.lightning_fields_problem
    good = {"steps": 3, "first_optimizer_steps": 0, "start": [1, 0]}
    good["swalr"] = None
    assert _callback_state_problem(good) is None
    bad: list[tuple[str, object]] = [(k, None) for k in ("steps", "start")]
    bad += [("steps", v) for v in (-1, 1.5, True, "3")]
    bad += [("first_optimizer_steps", v) for v in (-1, 2.0, None)]
    bad += [("start", v) for v in ([1], [1.5, 0], [None, -1], "1,0", [True, 0])]
    bad += [("swalr", v) for v in (1, "x", [])]
    for key, value in bad:
        message = _callback_state_problem({**good, key: value})
        assert message is not None and key in message, (key, value, message)
    for key in ("steps", "start", "swalr"):
        message = _callback_state_problem({k: v for k, v in good.items() if k != key})
        assert message is not None and key in message
    assert _callback_state_problem([good]) is not None


# -- the Hugging Face callback's identity record ------------------------------------------------


def test_identity_record_damage_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "swag_collector.json"
    record = {
        "format": "swag-collector-identity",
        "version": 1,
        "step": 8,
        "weights_sha256": "a" * 64,
        "collector_sha256": "0" * 64,
    }
    blob = json.dumps(record).encode()
    path.write_bytes(blob)
    assert _read_identity(path) == record
    cases = [blob[:cut] for cut in range(len(blob))]  # every truncation
    rng = random.Random(SEED)
    flips = []
    for pos in range(len(blob)):
        damaged = bytearray(blob)
        damaged[pos] ^= rng.randrange(1, 256)
        flips.append(bytes(damaged))
    for key in record:
        cases.append(json.dumps({k: v for k, v in record.items() if k != key}).encode())
        for value in [*GARBAGE[:-1], "A" * 64, "a" * 63, 2**70]:
            if value != record[key]:
                cases.append(json.dumps({**record, key: value}).encode())
    exact = 0
    for data in cases + flips:
        path.write_bytes(data)
        try:
            got = _read_identity(path)
        except ValueError as e:
            assert str(path) in str(e), str(e)
        else:  # a flip in a digest's hex or the step is caught by the comparison that follows
            exact += 1
            assert set(got) == set(record)
    assert exact <= 64 + 64 + 2  # only flips inside a digest or the step's digit can parse
    path.unlink()
    with pytest.raises(ValueError, match="does not exist"):
        _read_identity(path)
