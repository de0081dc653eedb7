"""Reading ``torch.distributed.checkpoint`` folders safely: swag.json, the index, a checksum.

A folder that :func:`swag.distributed.save` writes holds DCP's files and ``swag.json`` (the
layout, counts, dtypes and a checksum). :func:`read_header` checks ``swag.json`` field by field
and against DCP's index before anything is allocated.

DCP keeps its index in ``.metadata``, a pickle that DCP reads with ``pickle.load``, which can
run any code a hostile file names. :func:`read_metadata` reads it instead, with an unpickler that
builds only DCP's own metadata types, and :class:`SafeReader` hands that index to DCP's load.

:func:`digest` is a checksum of sharded statistics that does not depend on how they are sharded:
a sum, modulo 2⁶⁴, of a bijective mix of every entry's bits with its position in its per-
parameter tensor. A rank sums its own entries and one ``all_reduce`` adds the ranks' sums, so a
checkpoint saved at one world size verifies at any other. Changing any single entry changes the
sum; changing several at once goes unnoticed with probability about 2⁻⁶⁴.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from swag.core.distributed._shard import ShardPlan
from swag.core.layout import ParamLayout
from swag.core.posterior import SWAGPosterior
from swag.persistence import _io

META = "swag.json"
COUNT = "count"  # n, stored with the tensors as well, to match them to swag.json
FIELDS = ("layout", "n", "max_rank", "dtype", "deviation_dtype")
STATS = {
    "collector": _io.COLLECTOR_STATISTICS,
    SWAGPosterior.kind: _io.POSTERIOR_STATISTICS,
}


_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size", "float16", "bfloat16", "float32", "float64", "int64"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}

_M1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64 (odd: a bijection mod 2^64)
_M2 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64 (odd)
_CHUNK = 1 << 20
_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler (its memo is a dict: a damaged memo index cannot make it
    allocate gigabytes, as the C one does), building only the types of a DCP index."""

    def find_class(self, module: str, name: str) -> Any:
        if name not in _ALLOWED.get(module, ()):
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")
        return getattr(importlib.import_module(module), name)


def read_metadata(folder: Path) -> Metadata:
    """DCP's index of ``folder``, unpickled with only DCP's metadata types allowed.

    Raises:
        ValueError: naming the file, if it is missing, damaged or names anything else.
    """
    file = folder / ".metadata"
    try:
        # from memory, not the file: a damaged length field then fails as truncated data,
        # where reading it from a file would first allocate a buffer of that length (GBs)
        metadata = _Unpickler(io.BytesIO(file.read_bytes())).load()
    # A damaged pickle can fail in any way the unpickler's opcodes do (UnpicklingError,
    # EOFError, struct.error, TypeError, AttributeError, UnicodeDecodeError, ...), and the
    # file may be missing or unreadable (OSError): each means this folder cannot be read.
    except Exception as e:
        raise ValueError(f"{file} is not a readable DCP index ({type(e).__name__}: {e})") from None
    # a damaged pickle can build a Metadata whose attributes are missing or of another type
    entries = getattr(metadata, "state_dict_metadata", None)
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(metadata, Metadata) or not isinstance(entries, dict):
        raise ValueError(f"{file} is not a DCP index (it holds a {type(metadata).__name__})")
    if not isinstance(storage, dict):
        raise ValueError(f"{file} is not a DCP index (its storage_data is damaged)")
    for info in storage.values():
        name = str(getattr(info, "relative_path", ""))
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{file} points outside its folder ({name!r}); the folder is damaged")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file reader, handing DCP the index :func:`read_metadata` built, so that DCP never
    unpickles ``.metadata`` itself."""

    def __init__(self, folder: Path, metadata: Metadata) -> None:
        super().__init__(folder)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        meta = getattr(self._metadata, "storage_meta", None) or StorageMeta()
        meta.load_id = self.load_id
        self._metadata.storage_meta = meta
        return self._metadata


def digest(flat: dict[str, Tensor], plan: ShardPlan, group: dist.ProcessGroup | None) -> int:
    """The sharding-independent checksum of the statistics ``flat`` (``(..., L)`` each).

    Entry ``e`` of parameter ``p``'s rows in statistic ``s`` (row ``j`` of its leading shape)
    sits at ``g = (j · d₀ + row) · width + column`` in the per-parameter tensor that DCP stores;
    it adds ``mix(bits + (g + salt(s, p)) · M₁)`` with ``mix`` an xorshift-multiply bijection.
    Collective over ``group`` when ``plan`` is sharded. Returns an int in ``[0, 2⁶⁴)``.
    """
    device = next(iter(flat.values())).device
    total = torch.zeros((), dtype=torch.int64, device=device)
    params = len(plan.layout.shapes)
    for s, name in enumerate(sorted(flat)):
        t = flat[name]
        t2 = t.reshape(-1, t.shape[-1])
        for p, (offset, numel, (lo, _), shape) in enumerate(
            zip(plan.offsets, plan.numels, plan.rows, plan.layout.shapes, strict=True)
        ):
            rows, width = (shape[0] if shape else 1), math.prod(shape[1:])
            salt = (s * params + p) << 40
            for j in range(t2.shape[0]):
                part = t2[j, offset : offset + numel]
                base = (j * rows + lo) * width + salt
                for a in range(0, numel, _CHUNK):
                    total += _mix(part[a : a + _CHUNK], base + a)
    if plan.world > 1:
        dist.all_reduce(total, group=group)
    return int(total.item()) % (1 << 64)


def _mix(values: Tensor, start: int) -> Tensor:
    """Σ mix(bits_e + (start + e) · M₁) over the entries of ``values``, as an int64 (wrapping)."""
    bits = values.contiguous().view(_INTS[values.element_size()]).to(torch.int64)
    x = bits + torch.arange(start, start + values.numel(), device=values.device) * _M1
    x ^= (x >> 31) & ((1 << 33) - 1)  # a logical shift: the arithmetic one is not invertible
    x *= _M2
    x ^= (x >> 29) & ((1 << 35) - 1)
    return x.sum()


def checksum(meta: dict[str, Any], tensors: int) -> str:
    """SHA-256 (hex) of swag.json's fields (less the checksum) and the tensors' :func:`digest`."""
    fields = {k: v for k, v in meta.items() if k != _io.CHECKSUM}
    text = json.dumps(fields, sort_keys=True) + f"/{tensors:016x}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Header:
    """swag.json, checked: what a checkpoint folder holds."""

    meta: dict[str, Any]
    layout: ParamLayout
    n: int
    max_rank: int
    dtype: torch.dtype
    deviation_dtype: torch.dtype
    index: Metadata  # DCP's, read safely

    def shapes(self, kind: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The global shape and dtype of every tensor DCP stores, by key."""
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {COUNT: ((1,), torch.int64)}
        for stat in STATS[kind]:
            lead = (self.max_rank,) if stat == "deviations" else ()
            dtype = self.deviation_dtype if stat == "deviations" else self.dtype
            for name, shape in zip(self.layout.names, self.layout.shapes, strict=True):
                out[f"{stat}/{name}"] = ((*lead, shape[0] if shape else 1, *shape[1:]), dtype)
        return out


def read_header(path: _io.PathLike, kind: str) -> Header:
    """swag.json of the folder ``path``, checked field by field and against DCP's index."""
    folder = Path(path)
    file = folder / META
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a swag checkpoint folder (no {META})")
    try:
        meta = json.loads(file.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; nesting
        raise ValueError(f"{file} is not valid JSON ({e}); the folder is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != _io.FORMAT:
        raise ValueError(f"{file} is not a {_io.FORMAT} checkpoint (no swag header)")
    version = _io.int_field(meta, "version", file, low=1)
    if version > _io.VERSION:
        raise ValueError(
            f"{file} has format version {version}, newer than this swag-toolkit understands "
            f"({_io.VERSION}); upgrade swag-toolkit to read it"
        )
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}")
    for key in FIELDS + ((_io.CHECKSUM,) if version >= 2 else ()):
        _io.require(meta, key, file)
    header = Header(
        meta,
        ParamLayout.from_metadata(meta, "layout", file),
        _io.int_field(meta, "n", file, low=0 if kind == "collector" else 1),
        _io.int_field(meta, "max_rank", file),
        _io.dtype_field(meta, "dtype", file),
        _io.dtype_field(meta, "deviation_dtype", file),
        read_metadata(folder),
    )
    _check_index(path, header, kind)
    return header


def _check_index(path: _io.PathLike, header: Header, kind: str) -> None:
    """DCP's index must list exactly the tensors swag.json describes, and the data files must be
    large enough to hold them, before anything of their size is allocated."""
    expected = header.shapes(kind)
    saved = header.index.state_dict_metadata
    for key in sorted(set(saved) | set(expected)):
        entry = saved.get(key)
        properties = getattr(entry, "properties", None)
        found = (getattr(entry, "size", None), getattr(properties, "dtype", None))
        want = expected.get(key)
        if want is None or found != (torch.Size(want[0]), want[1]):
            raise ValueError(
                f"{path}: the saved tensors do not fit {META}: {key!r} is saved as "
                f"(shape, dtype) {found}, {META} says {want}"
            )
    need = sum(math.prod(shape) * dtype.itemsize for shape, dtype in expected.values())
    have = sum(f.stat().st_size for f in Path(path).iterdir() if f.suffix == ".distcp")
    if need > have:
        raise ValueError(f"{path}: its data files hold {have} bytes, {META} describes {need}")
