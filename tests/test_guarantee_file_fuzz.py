"""File fuzzing: every file kind swag writes, damaged on purpose, loads exactly or is refused.

Each kind (collector, SWAG posterior, point posterior, MultiSWAG; a DCP folder of a collector)
is written once, then truncated at every offset, given a byte flip at every position (seeded
XOR masks), and given metadata and tensor edits that are re-sealed with a valid checksum (so the
field checks, not the checksum, must catch them). Every case must either load an object equal
bit for bit to the saved one, or raise ``ValueError`` whose message names the file; any other
exception fails the test, and the model handed to a collector loader is never written.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from swag import Collector, MultiSWAG, PointPosterior, SWAGPosterior
from swag import distributed as sd
from swag.persistence import _io
from tests.reference import random_walk

SEED = 10


def make_model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))


def collected(model: nn.Module) -> Collector:
    collector = Collector(model, max_rank=2)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(3):
        random_walk(model, 1, g)
        collector.collect()
    return collector


def same_tensors(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def same(a: object, b: object) -> bool:
    """Whether two swag objects are equal bit for bit (tensors, dtypes, layout, counts)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Collector) and isinstance(b, Collector):
        names = ("shift", "shifted_mean", "m2", "deviations")
        return (a.n, a.max_rank, a.layout) == (b.n, b.max_rank, b.layout) and all(
            same_tensors(getattr(a, k), getattr(b, k)) for k in names
        )
    if isinstance(a, MultiSWAG) and isinstance(b, MultiSWAG):
        return len(a) == len(b) and all(map(same, a.components, b.components))
    if isinstance(a, SWAGPosterior) and isinstance(b, SWAGPosterior):
        return (a.n, a.layout) == (b.n, b.layout) and all(
            same_tensors(getattr(a, k), getattr(b, k)) for k in ("mean", "std", "deviations")
        )
    if isinstance(a, PointPosterior) and isinstance(b, PointPosterior):
        return a.layout == b.layout and same_tensors(a.mean, b.mean)
    raise TypeError(type(a))


@dataclass
class Kind:
    """A file kind: how to write the reference object and how to load one."""

    name: str
    obj: object
    load: Callable[[Path], object]

    def save(self, path: Path) -> None:
        self.obj.save(path)  # type: ignore[attr-defined]


@dataclass
class Tally:
    """Outcomes of the cases of one test."""

    exact: int = 0
    refused: int = 0

    def check(self, kind: Kind, path: Path, model: nn.Module | None = None) -> str:
        """Load ``path``: it must give ``kind.obj`` exactly or a ValueError naming the file."""
        before = None if model is None else [p.clone() for p in model.parameters()]
        try:
            loaded = kind.load(path)
        except ValueError as e:
            assert path.name in str(e), f"{kind.name}: the error does not name the file: {e}"
            self.refused += 1
            message = str(e)
        else:
            assert same(loaded, kind.obj), f"{kind.name}: {path.name} loaded a different object"
            self.exact += 1
            message = ""
        if before is not None and model is not None:  # the loader never writes the model
            assert all(map(torch.equal, before, model.parameters()))
        return message

    @property
    def total(self) -> int:
        return self.exact + self.refused


MODEL = make_model()
COLLECTOR = collected(MODEL)
SWAG = COLLECTOR.posterior()
POINT = PointPosterior.from_model(MODEL)
KINDS = {
    "collector": Kind("collector", COLLECTOR, lambda p: Collector.load(p, MODEL)),
    "swag_posterior": Kind("swag_posterior", SWAG, SWAGPosterior.load),
    "point_posterior": Kind("point_posterior", POINT, PointPosterior.load),
    "multiswag": Kind(
        "multiswag", MultiSWAG([SWAG, POINT, MultiSWAG([POINT, SWAG])]), MultiSWAG.load
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


def put(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` (an open with O_TRUNC costs milliseconds on some disks)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def written(kind: Kind, folder: Path) -> tuple[Path, bytes]:
    path = folder / f"{kind.name}.safetensors"
    kind.save(path)
    return path, path.read_bytes()


def test_a_clean_file_loads_exactly(kind: Kind, tmp_path: Path) -> None:
    path, _ = written(kind, tmp_path)
    assert Tally().check(kind, path) == ""


def test_every_truncation_is_refused(kind: Kind, tmp_path: Path) -> None:
    path, blob = written(kind, tmp_path)
    tally = Tally()
    for cut in range(len(blob)):
        put(path, blob[:cut])
        tally.check(kind, path, MODEL)
    assert tally.refused == len(blob)  # a prefix never holds the whole object


def test_a_byte_flip_anywhere_is_refused_or_harmless(kind: Kind, tmp_path: Path) -> None:
    path, blob = written(kind, tmp_path)
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = random.Random(SEED)
    tally, data = Tally(), Tally()
    for pos in range(len(blob)):
        damaged = bytearray(blob)
        damaged[pos] ^= rng.randrange(1, 256)
        put(path, bytes(damaged))
        (tally if pos < header_end else data).check(kind, path, MODEL)
    # every flip in the tensor data is caught (by the checksum: it still parses)
    assert data.refused == len(blob) - header_end
    # in the header only a flip in the padding after the JSON (a space into other whitespace)
    # can leave the file meaning the same thing
    assert tally.exact <= header_end - 8 - len(blob[8:header_end].rstrip(b" "))


def _split(blob: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    n = int.from_bytes(blob[:8], "little")
    return st_load(blob), dict(json.loads(blob[8 : 8 + n])["__metadata__"])


def _sealed(tensors: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """A file with a valid checksum over (edited) contents: a crafted file, not a damaged one."""
    meta = {k: v for k, v in meta.items() if k != _io.CHECKSUM}
    meta[_io.CHECKSUM] = _io.checksum(tensors, meta)
    return st_save(tensors, metadata=meta)


GARBAGE = [
    "",
    "abc",
    "-1",
    "1.5",
    "1e3",
    " 3",
    "+3",
    "03",
    "\u0663",  # an Arabic-Indic digit 3, which int() accepts
    "9" * 30,
    "null",
    "true",
    "[]",
    "{}",
    "{",
    '"x"',
    "Tensor",
    "float8_e4m3fn",
    "int64",
    "complex64",
    "float16",
    "bfloat16",
    "float64",
    "[[1, [2], 2]]",
    '[["0.weight", [2, 3], "float32"]]',
    '[["0.weight", [2, -3], "float32"], ["0.bias", [2], "float32"]]',
    '[["0.weight", [true, 3], "float32"]]',
    '[["0.weight", [2, 3], "Tensor"]]',
    '[["0.weight", [2, 3], "int64"]]',
    '[["0.weight", [6], "float32"], ["0.weight", [5], "float32"]]',
    '["laplace"]',
    '["point_posterior", "point_posterior", "point_posterior", "point_posterior"]',
    "[1]",
    "[" * 100_000 + "]" * 100_000,  # nested past Python's recursion limit
]


def edits(meta: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each field removed, then set to each garbage value (checksum excluded: it is the seal)."""
    for key in sorted(meta):
        if key == _io.CHECKSUM:
            continue
        yield key, {k: v for k, v in meta.items() if k != key}
        for value in GARBAGE:
            if value != meta[key]:
                yield key, {**meta, key: value}


def test_metadata_edits_are_refused_naming_the_field(kind: Kind, tmp_path: Path) -> None:
    path, blob = written(kind, tmp_path)
    tensors, meta = _split(blob)
    tally = Tally()
    for key, edited in edits(meta):
        put(path, _sealed(tensors, edited))
        message = tally.check(kind, path, MODEL)
        field = key.rsplit(".", 1)[-1]
        names_it = field in message or "tensor" in message or field in ("format", "kind")
        assert not message or names_it, f"{key}: {message}"
    # only a few edits can leave the same object (e.g. version "1": a version-1 file with a
    # checksum); everything else is refused
    assert tally.exact <= 2 * len(meta)
    put(path, _sealed(tensors, {**meta, "version": "1"}))
    assert tally.check(kind, path) == ""


FOREIGN = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]


def tensor_edits(tensors: dict[str, Tensor], fixed: bool) -> Iterator[dict[str, Tensor]]:
    """Each tensor removed, cast to a foreign dtype (another float too when the metadata ``fixed``
    it), cut short, given a dimension; negative variances, NaN statistics; one tensor added."""
    floats = [torch.float16, torch.bfloat16, torch.float64] if fixed else []
    for name, t in sorted(tensors.items()):
        rest = {k: v for k, v in tensors.items() if k != name}
        yield rest
        for dtype in FOREIGN + floats:
            if dtype != t.dtype:
                yield {**rest, name: t.to(dtype)}
        yield {**rest, name: t.reshape(-1)[:-1].clone()}
        yield {**rest, name: t.unsqueeze(0).clone()}
        if name.endswith(("m2", "std")) and t.numel():
            yield {**rest, name: -t - 1}  # negative: no variance is
        if name.endswith(("shift", "m2")):
            yield {**rest, name: t.clone().fill_(float("nan"))}
    yield {**tensors, "extra": torch.zeros(3)}


def test_tensor_edits_are_refused(kind: Kind, tmp_path: Path) -> None:
    path, blob = written(kind, tmp_path)
    tensors, meta = _split(blob)
    tally = Tally()
    for edited in tensor_edits(tensors, fixed=kind.name == "collector"):
        put(path, _sealed(edited, meta))
        assert tally.check(kind, path, MODEL)  # refused, with a message
    assert tally.refused == tally.total > 5 * len(tensors)


def test_version_1_files_without_a_checksum_still_load(kind: Kind, tmp_path: Path) -> None:
    path, blob = written(kind, tmp_path)
    tensors, meta = _split(blob)
    old = {k: v for k, v in meta.items() if k != _io.CHECKSUM} | {"version": "1"}
    put(path, st_save(tensors, metadata=old))  # what swag-toolkit 0.x wrote
    assert Tally().check(kind, path) == ""
    # a version-2 file must carry its checksum
    put(path, st_save(tensors, metadata=old | {"version": "2"}))
    with pytest.raises(ValueError, match="lacks the metadata field 'checksum'"):
        kind.load(path)


# -- DCP checkpoint folders (swag.distributed.save, one process) ------------------------------


def dcp_kinds(folder: Path) -> list[tuple[Kind, Path]]:
    """A collector's and a posterior's folder; errors must name the folder (or a file in it)."""
    out = []
    for name, obj, load in (
        ("dcp_collector", COLLECTOR, lambda p: sd.load_collector(p, MODEL)),
        ("dcp_posterior", SWAG, sd.load_posterior),
    ):
        sd.save(obj, folder / name)  # type: ignore[arg-type]
        out.append((Kind(name, obj, load), folder / name))
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_dcp_folder_damage_is_refused_or_harmless(tmp_path: Path, damage: str) -> None:
    rng = random.Random(SEED)
    for kind, folder in dcp_kinds(tmp_path):
        for file in sorted(folder.iterdir()):  # swag.json, .metadata (the index), the data
            blob = file.read_bytes()
            tally = Tally()
            for pos in sorted(rng.sample(range(len(blob)), min(len(blob), DCP_CASES))):
                damaged = bytearray(blob[:pos] if damage == "truncate" else blob)
                if damage == "flip":
                    damaged[pos] ^= rng.randrange(1, 256)
                put(file, bytes(damaged))
                tally.check(kind, folder, MODEL)
            put(file, blob)
            # a flip may hit JSON whitespace or a pickled id string; a prefix never suffices
            assert damage == "flip" or tally.exact == 0, (kind.name, file.name)
        assert Tally().check(kind, folder) == ""


DCP_CASES = 40  # positions per file and damage; every one costs a DCP load (~5 ms)


def test_dcp_swag_json_edits_are_refused_naming_the_field(tmp_path: Path) -> None:
    from swag.core.distributed._dcp import checksum, digest
    from swag.core.distributed._shard import ShardPlan

    garbage: list[object] = [*GARBAGE, -1, 1.5, True, None, [], {}, 10**30, 3]
    for kind, folder in dcp_kinds(tmp_path):
        file = folder / "swag.json"
        meta = json.loads(file.read_text())
        obj = kind.obj
        assert isinstance(obj, Collector | SWAGPosterior)
        names = ["shift", "shifted_mean", "m2"] if isinstance(obj, Collector) else ["mean", "std"]
        flat = {k: getattr(obj, k) for k in [*names, "deviations"]}
        seal = digest(flat, ShardPlan(obj.layout, 0, 1), None)
        tally = Tally()
        for key in sorted(set(meta) - {_io.CHECKSUM}):
            rest = {k: v for k, v in meta.items() if k != key}
            for edited in [rest] + [{**rest, key: v} for v in garbage if v != meta[key]]:
                edited[_io.CHECKSUM] = checksum(edited, seal)  # crafted, not damaged
                put(file, json.dumps(edited).encode())
                message = tally.check(kind, folder, MODEL)
                named = key in message or "tensor" in message or key in ("format", "kind")
                assert not message or named, f"{key}: {message}"
        put(file, json.dumps(meta).encode())
        assert tally.check(kind, folder) == ""
        assert tally.exact <= 2  # version 1 with a valid checksum is the same folder


def test_a_hostile_dcp_index_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    folder = tmp_path / "c"
    sd.save(COLLECTOR, folder)
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"\.metadata is not a readable DCP index"):
        sd.load_collector(folder, MODEL)
    assert not marker.exists()
