"""Files: safetensors written atomically and validated on load (no pickle, no code execution).

Every loader answers a damaged or foreign file with a ``ValueError`` that names the file and
the field. The typed readers here (:func:`int_field`, :func:`dtype_field`, :func:`layout_rows`,
:func:`json_field`, :func:`tensor_field`) do the checking, so that each loader stays short.

Since format version 2 a file carries a ``checksum``: a SHA-256 over its metadata and tensors
(names, dtypes, shapes, bytes), verified on load, so that a flipped byte inside the tensor data
(which safetensors cannot notice) is refused instead of loading a silently different number.
Version 1 files, written before the checksum, still load, with every other check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

FORMAT = "swag-toolkit"
VERSION = 2  # 2: with a checksum; 1: without (still read)
CHECKSUM = "checksum"

PathLike = str | os.PathLike[str]

# The floating dtypes swag writes (statistics, deviations, parameters); anything else is refused.
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
COLLECTOR_STATISTICS = ("shift", "shifted_mean", "m2", "deviations")
"""The statistics a collector saves (file, DCP and callback state alike), in this order."""
POSTERIOR_STATISTICS = ("mean", "std", "deviations")
"""The statistics a SWAG posterior saves."""
_NON_NEGATIVE = ("m2", "std")

_INT = re.compile(r"0|[1-9][0-9]{0,17}")  # the canonical decimals str(int) writes, < 10^18


def save_file(path: PathLike, kind: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write ``tensors`` and ``meta`` to ``path`` as safetensors, atomically, with a checksum.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    ``path``: a crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    header = {"format": FORMAT, "version": str(VERSION), "kind": kind, **meta}
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header[CHECKSUM] = checksum(cpu, header)
    write_atomic(path, st_save(cpu, metadata=header))


def write_atomic(path: PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` through a flushed temporary file renamed over it.

    A crash leaves either the old file or the new one, never a torn one. The only writer of
    swag's files (safetensors, and the JSON beside a DCP checkpoint).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_statistics(tensors: Mapping[str, Tensor], where: PathLike) -> None:
    """The value checks every loader applies: finite statistics, ``m2`` and ``std`` >= 0.

    Raises:
        ValueError: naming ``where`` and the tensor.
    """
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        if not bool(t.isfinite().all()):
            raise ValueError(
                f"{where}: tensor {name!r} has non-finite entries; the file is damaged"
            )
        if name.rsplit(".", 1)[-1] in _NON_NEGATIVE and bool((t < 0).any()):
            raise ValueError(f"{where}: tensor {name!r} has negative entries; the file is damaged")


def read_kind(path: PathLike) -> str:
    """The ``kind`` recorded in the swag file at ``path`` (checked whole by :func:`load_file`)."""
    return load_file(path, None)[1]["kind"]


def load_file(
    path: PathLike, kind: str | None, device: torch.device | str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by :func:`save_file` and check that it holds an intact ``kind``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, not safetensors, not written by swag-toolkit, of
            another kind (``kind=None`` takes any), of a newer format version, fails its
            checksum or :func:`check_statistics`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    blob = path.read_bytes()
    try:
        # safetensors raises SafetensorError for a bad length prefix, header JSON, offsets or
        # dtype name; its Python side raises KeyError (a dtype it parses but cannot map),
        # AssertionError (an empty buffer for a non-empty shape), and torch RuntimeError or
        # ValueError (a buffer that does not fit the shape).
        tensors = st_load(blob)
        meta = _read_metadata(blob)
    except (SafetensorError, ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise ValueError(
            f"{path} is not a readable swag file (truncated, or not safetensors): {e}"
        ) from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by {FORMAT} (its metadata has no swag header)")
    version = int_field(meta, "version", path, low=1)
    if version > VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this swag-toolkit "
            f"understands ({VERSION}); upgrade swag-toolkit to read it"
        )
    verify = version >= 2 or CHECKSUM in meta
    if verify and require(meta, CHECKSUM, path) != checksum(tensors, meta):
        raise ValueError(
            f"{path} fails its checksum: its tensors or metadata changed after it was "
            "written (a damaged copy?)"
        )
    found = require(meta, "kind", path)
    if kind is not None and found != kind:
        raise ValueError(f"{path} holds a {found!r}, not a {kind!r}")
    check_statistics(tensors, path)
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def _read_metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError("malformed metadata")
    return {str(k): str(v) for k, v in meta.items()}


def checksum(tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> str:
    """SHA-256 (hex) over ``meta`` (less its ``checksum``) and the CPU ``tensors``.

    Each tensor contributes its name, dtype, shape and bytes, in name order, so the digest does
    not depend on how safetensors lays the file out.
    """
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != CHECKSUM}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def require(meta: Mapping[str, Any], key: str, path: PathLike) -> Any:
    """``meta[key]``, or a clear error naming the file and the missing field."""
    if key not in meta:
        raise ValueError(f"{path} lacks the metadata field {key!r}; the file is damaged")
    return meta[key]


def int_field(
    meta: Mapping[str, Any], key: str, where: PathLike, *, low: int = 0, high: int | None = None
) -> int:
    """``meta[key]`` as an int in ``[low, high]``: a JSON int, or its canonical decimal string."""
    value = require(meta, key, where)
    if isinstance(value, str) and _INT.fullmatch(value):
        number = int(value)
    elif type(value) is int:
        number = value
    else:
        raise ValueError(f"{where}: metadata field {key!r} must be an integer, got {_short(value)}")
    if number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}: metadata field {key!r} must be {bounds}, got {number}")
    return number


def json_field(meta: Mapping[str, Any], key: str, where: PathLike) -> Any:
    """``meta[key]``, a string holding JSON, parsed."""
    value = require(meta, key, where)
    try:
        if not isinstance(value, str):
            raise ValueError(f"a {type(value).__name__}, not a JSON string")
        return json.loads(value)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting
        raise ValueError(
            f"{where}: metadata field {key!r} is not valid JSON ({e}): {_short(value)}"
        ) from None


def dtype_field(meta: Mapping[str, Any], key: str, where: PathLike) -> torch.dtype:
    """``meta[key]``, the name of a floating dtype swag writes (``FLOAT_DTYPES``)."""
    value = require(meta, key, where)
    dtype = FLOAT_DTYPES.get(value) if isinstance(value, str) else None
    if dtype is None:
        raise ValueError(
            f"{where}: metadata field {key} {_short(value)} is not a floating torch dtype "
            f"swag-toolkit writes (one of {', '.join(FLOAT_DTYPES)})"
        )
    return dtype


def layout_rows(
    meta: Mapping[str, Any], key: str, where: PathLike
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], tuple[torch.dtype, ...]]:
    """``meta[key]``, a layout as ``ParamLayout.to_json`` writes it, checked row by row.

    Returns its names, shapes and dtypes; :meth:`swag.ParamLayout.from_metadata` builds the
    layout from them.
    """
    rows = json_field(meta, key, where)
    fix = "expected a non-empty list of [name, shape, dtype] with distinct names"
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: metadata field {key!r} is not a layout ({fix})")
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    dtypes: list[torch.dtype] = []
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
        ok = ok and isinstance(row[1], list) and all(type(x) is int and x >= 0 for x in row[1])
        dtype = FLOAT_DTYPES.get(row[2]) if ok and isinstance(row[2], str) else None
        if dtype is None or row[0] in names:
            raise ValueError(
                f"{where}: metadata field {key!r}, row {i} {_short(row)} is not a parameter "
                f"({fix}; dtypes among {', '.join(FLOAT_DTYPES)})"
            )
        names.append(row[0])
        shapes.append(tuple(row[1]))
        dtypes.append(dtype)
    return tuple(names), tuple(shapes), tuple(dtypes)


def check_shape(
    tensors: Mapping[str, Tensor], name: str, shape: tuple[int, ...], path: PathLike
) -> Tensor:
    """``tensors[name]``, checked to exist with ``shape``."""
    t = tensors.get(name)
    if t is None:
        raise ValueError(f"{path} lacks the tensor {name!r}; the file is damaged")
    if tuple(t.shape) != shape:
        raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def tensor_field(
    tensors: Mapping[str, Tensor],
    name: str,
    where: PathLike,
    shape: tuple[int, ...],
    dtypes: Collection[torch.dtype],
) -> Tensor:
    """``tensors[name]``, checked to exist with ``shape`` and one of ``dtypes``."""
    t = check_shape(tensors, name, shape, where)
    if t.dtype not in dtypes:
        allowed = " or ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ValueError(
            f"{where}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, expected {allowed}"
        )
    return t


def expect_tensors(tensors: Mapping[str, Tensor], names: Collection[str], where: PathLike) -> None:
    """Refuse tensors other than ``names`` (a foreign or spliced file)."""
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise ValueError(f"{where} holds unexpected tensors {extra[:5]}; expected {sorted(names)}")
