"""Save, load and resume: atomic, validated, bit-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file as raw_save
from torch import nn

from swag import Collector, SWAGPosterior
from tests.reference import random_walk


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def collect(collector: Collector, model: nn.Module, steps: int, g: torch.Generator) -> None:
    for _ in range(steps):
        random_walk(model, 1, g)
        collector.collect()


@pytest.mark.parametrize("max_rank", [0, 3])
def test_resume_is_bit_identical(tmp_path: Path, max_rank: int) -> None:
    model = net()
    g = torch.Generator().manual_seed(0)
    uninterrupted = Collector(model, max_rank=max_rank)
    g_state = g.get_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    collect(uninterrupted, model, 11, g)
    full = uninterrupted.posterior()

    model.load_state_dict(weights)
    g.set_state(g_state)
    first = Collector(model, max_rank=max_rank)
    collect(first, model, 5, g)
    first.save(tmp_path / "c.safetensors")
    del first
    resumed = Collector.load(tmp_path / "c.safetensors", model)
    assert resumed.n == 5
    collect(resumed, model, 6, g)
    part = resumed.posterior()
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(full, name), getattr(part, name)), name
    assert part.n == full.n == 11


def test_state_dict_round_trip_and_validation() -> None:
    model = net()
    a = Collector(model, max_rank=2)
    collect(a, model, 4, torch.Generator().manual_seed(1))
    b = Collector(model, max_rank=2)
    b.load_state_dict(a.state_dict())
    assert b.n == 4 and torch.equal(b.m2, a.m2) and torch.equal(b.deviations, a.deviations)
    # a different rank: refused before anything is copied
    c = Collector(model, max_rank=3)
    with pytest.raises(RuntimeError, match="max_rank is 2 in the saved state but 3 here"):
        c.load_state_dict(a.state_dict())
    assert c.n == 0 and not c.m2.any()
    other = Collector(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)), max_rank=2)
    with pytest.raises(
        RuntimeError, match=r"2\.weight: saved shape \(3, 4\) float32, here shape \(2, 4\)"
    ):
        other.load_state_dict(a.state_dict())


def test_collector_nested_in_a_module_checkpoints_with_it() -> None:
    model = net()
    holder = nn.Module()
    holder.swag = Collector(model, max_rank=2)
    collect(holder.swag, model, 3, torch.Generator().manual_seed(2))
    state = holder.state_dict()
    assert "swag.m2" in state and not any(k.startswith("swag.0.") for k in state)
    fresh = nn.Module()
    fresh.swag = Collector(model, max_rank=2)
    fresh.load_state_dict(state)
    assert fresh.swag.n == 3


def test_posterior_round_trip(tmp_path: Path) -> None:
    model = net()
    c = Collector(model, max_rank=3)
    collect(c, model, 7, torch.Generator().manual_seed(3))
    post = c.posterior()
    post.save(tmp_path / "p.safetensors")
    back = SWAGPosterior.load(tmp_path / "p.safetensors")
    assert back.layout == post.layout and back.n == 7
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(back, name), getattr(post, name))


def test_load_into_a_different_model_names_the_difference(tmp_path: Path) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    c.collect()
    c.save(tmp_path / "c.safetensors")
    wider = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(
        ValueError, match=r"0\.weight: saved shape \(4, 5\) float32, here shape \(6, 5\)"
    ):
        Collector.load(tmp_path / "c.safetensors", wider)


def test_truncated_foreign_and_wrong_kind_files(tmp_path: Path) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    c.collect()
    path = tmp_path / "c.safetensors"
    c.save(path)
    blob = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated, or not safetensors"):
        Collector.load(tmp_path / "cut.safetensors", model)
    (tmp_path / "junk.bin").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="truncated, or not safetensors"):
        Collector.load(tmp_path / "junk.bin", model)
    raw_save({"mean": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="was not written by swag-toolkit"):
        Collector.load(tmp_path / "foreign.safetensors", model)
    with pytest.raises(ValueError, match="holds a 'collector', not a 'swag_posterior'"):
        SWAGPosterior.load(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        SWAGPosterior.load(tmp_path / "missing.safetensors")


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    c.collect()
    path = tmp_path / "c.safetensors"
    c.save(path)
    before = path.read_bytes()
    c.collect()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        c.save(path)
    assert path.read_bytes() == before  # the old file survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


# -- crafted and damaged files (issue 10, item 9) ---------------------------------------------
# Each file below is written the way swag-toolkit 0.x (format version 1, no checksum) wrote it,
# so that only the field checks stand between it and the loader.


def _v1(path: Path, kind: str, tensors: dict[str, torch.Tensor], **meta: str) -> Path:
    header = {"format": "swag-toolkit", "version": "1", "kind": kind, **meta}
    save_st(path, {k: v.contiguous() for k, v in tensors.items()}, header)
    return path


def save_st(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    raw_save(tensors, str(path), metadata=meta)


def _collector_fields(c: Collector) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    names = ("shift", "shifted_mean", "m2", "deviations")
    return {k: getattr(c, k) for k in names}, {k: str(v) for k, v in c._meta().items()}


def _posterior_fields(c: Collector) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    p = c.posterior()
    tensors = {"mean": p.mean, "std": p.std, "deviations": p.deviations}
    return tensors, {"layout": p.layout.to_json(), "n": str(p.n)}


COLLECTOR_EDITS = [
    ({"n": "abc"}, r"metadata field 'n' must be an integer, got 'abc'"),
    ({"n": "-1"}, r"metadata field 'n' must be an integer"),
    ({"max_rank": "1e3"}, r"metadata field 'max_rank' must be an integer"),
    ({"layout": "{"}, r"metadata field 'layout' is not valid JSON"),
    ({"layout": '[["0.weight", [4, 5], "Tensor"]]'}, r"metadata field 'layout', row 0"),
    ({"dtype": "Tensor"}, r"metadata field dtype 'Tensor' is not a floating torch dtype"),
    ({"deviation_dtype": "int64"}, r"deviation_dtype 'int64' is not a floating torch dtype"),
    ({"dtype": "float16"}, r"tensor 'shift' is float32, expected float16"),
]


@pytest.mark.parametrize(("edit", "message"), COLLECTOR_EDITS)
def test_crafted_collector_metadata_is_refused_naming_file_and_field(
    tmp_path: Path, edit: dict[str, str], message: str
) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    collect(c, model, 3, torch.Generator().manual_seed(4))
    tensors, meta = _collector_fields(c)
    path = _v1(tmp_path / "c.safetensors", "collector", tensors, **(meta | edit))
    with pytest.raises(ValueError, match=message) as info:
        Collector.load(path, model)
    assert str(path) in str(info.value)


POSTERIOR_EDITS = [
    ({"n": "0"}, {}, r"metadata field 'n' must be >= 1, got 0"),
    ({"layout": "not json"}, {}, r"metadata field 'layout' is not valid JSON"),
    ({}, {"mean": torch.int64}, r"tensor 'mean' is int64, expected"),
    ({}, {"std": torch.float64}, r"tensor 'std' is float64, expected float32"),
    ({}, {"deviations": torch.int32}, r"tensor 'deviations' is int32, expected"),
]


@pytest.mark.parametrize(("edit", "casts", "message"), POSTERIOR_EDITS)
def test_crafted_posterior_file_is_refused_naming_file_and_field(
    tmp_path: Path, edit: dict[str, str], casts: dict[str, torch.dtype], message: str
) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    collect(c, model, 3, torch.Generator().manual_seed(5))
    tensors, meta = _posterior_fields(c)
    tensors = {k: v.to(casts.get(k, v.dtype)) for k, v in tensors.items()}
    path = _v1(tmp_path / "p.safetensors", "swag_posterior", tensors, **(meta | edit))
    with pytest.raises(ValueError, match=message) as info:
        SWAGPosterior.load(path)
    assert str(path) in str(info.value)


def test_crafted_mixture_and_point_files_are_refused(tmp_path: Path) -> None:
    from swag import MultiSWAG, PointPosterior

    point = PointPosterior.from_model(net())
    layout = point.layout.to_json()
    path = tmp_path / "m.safetensors"
    _v1(path, "multiswag", {"c0.mean": point.mean}, components="[", **{"c0.layout": layout})
    with pytest.raises(ValueError, match=r"m\.safetensors: metadata field 'components' is not"):
        MultiSWAG.load(path)
    _v1(path, "point_posterior", {"mean": point.mean.to(torch.int64)}, layout=layout)
    with pytest.raises(ValueError, match=r"m\.safetensors: tensor 'mean' is int64"):
        PointPosterior.load(path)


def test_a_flipped_byte_in_tensor_data_is_refused_not_loaded(tmp_path: Path) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    collect(c, model, 3, torch.Generator().manual_seed(6))
    path = tmp_path / "p.safetensors"
    c.posterior().save(path)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01  # the last byte of the tensor data: still parses, one number changes
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="fails its checksum"):
        SWAGPosterior.load(path)


def test_version_1_files_load_with_every_field_check(tmp_path: Path) -> None:
    model = net()
    c = Collector(model, max_rank=2)
    collect(c, model, 3, torch.Generator().manual_seed(7))
    path = _v1(tmp_path / "c.safetensors", "collector", *_collector_fields(c)[:1], **c_meta(c))
    back = Collector.load(path, model)
    assert back.n == 3 and torch.equal(back.deviations, c.deviations)


def c_meta(c: Collector) -> dict[str, str]:
    return _collector_fields(c)[1]


# -- DCP folders (swag.distributed) -----------------------------------------------------------


def _dcp(tmp_path: Path) -> tuple[Path, nn.Module, Collector]:
    from swag import distributed as sd

    model = net()
    c = Collector(model, max_rank=2)
    collect(c, model, 3, torch.Generator().manual_seed(8))
    sd.save(c, tmp_path / "dcp")
    return tmp_path / "dcp", model, c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"swag\.json is not valid JSON"),
        ("[1, 2]", r"swag\.json is not a swag-toolkit checkpoint"),
    ],
)
def test_dcp_swag_json_that_is_not_json_is_refused(tmp_path: Path, text: str, message: str) -> None:
    from swag import distributed as sd

    folder, model, _ = _dcp(tmp_path)
    (folder / "swag.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        sd.load_collector(folder, model)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layout", "{", r"swag\.json: metadata field 'layout' is not valid JSON"),
        ("max_rank", True, r"swag\.json: metadata field 'max_rank' must be an integer"),
        ("max_rank", 2**40, r"do not fit swag\.json: 'deviations/0\.bias'"),
        ("n", 1.5, r"swag\.json: metadata field 'n' must be an integer, got 1.5"),
    ],
)
def test_dcp_swag_json_fields_are_checked_before_allocating(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    import json

    from swag import distributed as sd

    folder, model, _ = _dcp(tmp_path)
    meta = json.loads((folder / "swag.json").read_text())
    meta[field] = value
    meta.pop("checksum", None)  # a version-1 folder: only the field checks apply
    meta["version"] = 1
    (folder / "swag.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        sd.load_collector(folder, model)


def test_dcp_flipped_tensor_byte_is_refused_not_loaded(tmp_path: Path) -> None:
    import struct

    from swag import distributed as sd

    folder, model, c = _dcp(tmp_path)
    data = next(folder.glob("*.distcp"))
    blob = bytearray(data.read_bytes())
    at = blob.find(struct.pack("<f", c.m2[0].item()))  # m2's first entry, as stored
    assert at > 0
    blob[at] ^= 0x01  # its lowest mantissa bit: a number that still reads
    data.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="fails its checksum"):
        sd.load_collector(folder, model)


def test_dcp_checksum_verifies_across_devices(tmp_path: Path, device: torch.device) -> None:
    """A folder saved from ``device`` verifies when loaded on CPU (the digest's integer
    arithmetic wraps the same way on every device), and back onto ``device``."""
    from swag import distributed as sd

    model = net().to(device)
    c = Collector(model, max_rank=2)
    collect(c, model, 4, torch.Generator().manual_seed(9))
    sd.save(c.posterior(), tmp_path / "p")
    for where in ("cpu", device):
        back = sd.load_posterior(tmp_path / "p", device=where)
        assert isinstance(back, SWAGPosterior)
        assert torch.equal(back.std.cpu(), c.posterior().std.cpu())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layout", "{", r"the saved state: metadata field 'layout' is not valid JSON"),
        ("layout", '[["0.weight", [4, 5], "Tensor"]]', r"metadata field 'layout', row 0"),
        ("n", "abc", r"the saved state: metadata field 'n' must be an integer, got 'abc'"),
    ],
)
def test_damaged_extra_state_is_refused_before_anything_is_copied(
    field: str, value: str, message: str
) -> None:
    model = net()
    a = Collector(model, max_rank=2)
    collect(a, model, 3, torch.Generator().manual_seed(10))
    state = a.state_dict()
    state["_extra_state"] = {**state["_extra_state"], field: value}
    b = Collector(model, max_rank=2)
    with pytest.raises(RuntimeError, match=message):
        b.load_state_dict(state)
    assert b.n == 0 and not b.m2.any() and not b.shift.any()
