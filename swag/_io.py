"""Files: safetensors written atomically and validated on load (no pickle, no code execution)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

FORMAT = "swag-toolkit"
VERSION = 1

PathLike = str | os.PathLike[str]


def save_file(path: PathLike, kind: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write ``tensors`` and ``meta`` to ``path`` as safetensors, atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    ``path``: a crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    header = {"format": FORMAT, "version": str(VERSION), "kind": kind, **meta}
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=header)
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


def load_file(
    path: PathLike, kind: str, device: torch.device | str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by :func:`save_file` and check that it holds a ``kind``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, not safetensors, not written by swag-toolkit, of
            another kind, or of a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    blob = path.read_bytes()
    try:
        tensors = st_load(blob)
        meta = _read_metadata(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a readable swag file (truncated, or not safetensors): {e}"
        ) from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by {FORMAT} (its metadata has no swag header)")
    if int(meta.get("version", "0")) > VERSION:
        raise ValueError(
            f"{path} has format version {meta['version']}, newer than this swag-toolkit "
            f"understands ({VERSION}); upgrade swag-toolkit to read it"
        )
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}")
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


def require(meta: dict[str, str], key: str, path: PathLike) -> str:
    """``meta[key]``, or a clear error naming the file and the missing field."""
    if key not in meta:
        raise ValueError(f"{path} lacks the metadata field {key!r}; the file is damaged")
    return meta[key]


def check_shape(
    tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], path: PathLike
) -> Tensor:
    """``tensors[name]``, checked to exist with ``shape``."""
    t = tensors.get(name)
    if t is None:
        raise ValueError(f"{path} lacks the tensor {name!r}; the file is damaged")
    if tuple(t.shape) != shape:
        raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t
