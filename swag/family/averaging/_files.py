"""``swag average CKPT... --out FILE``: a weighted average of checkpoint files, streamed.

Reads safetensors files, plain torch state dicts (``torch.load(weights_only=True, mmap=True)``)
and DCP folders; holds one tensor of each file at a time, so peak memory is O(largest tensor),
not O(P · files). Writes safetensors atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from swag.persistence import _io

__all__ = ["average_files", "register", "run"]

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

Entry = tuple[tuple[int, ...], torch.dtype]


class _Source:
    """One checkpoint: its tensors' shapes and dtypes, and a reader of one tensor by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self._get: Callable[[str], Tensor]
        if path.is_dir():
            self._open_dcp()
        elif path.suffix == ".safetensors":
            self.entries = _safetensors_entries(path)
            handle: Any = safe_open(str(path), framework="pt")
            self._get = handle.get_tensor
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
            ):
                raise ValueError(
                    f"{path} is not a flat state dict of tensors (name -> Tensor); save "
                    "model.state_dict() itself, not a dict that holds it"
                )
            self.entries = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
            self._get = state.__getitem__

    def _open_dcp(self) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata
        from torch.distributed.checkpoint.state_dict_loader import load

        from swag.core.distributed._dcp import SafeReader, read_metadata

        meta = read_metadata(self.path)
        for name, info in meta.state_dict_metadata.items():
            if not isinstance(info, TensorStorageMetadata):
                raise ValueError(f"{self.path}: entry {name!r} is not a tensor; cannot average")
            self.entries[name] = (tuple(info.size), info.properties.dtype)

        def get(name: str) -> Tensor:
            shape, dtype = self.entries[name]
            out = {name: torch.empty(shape, dtype=dtype)}
            with warnings.catch_warnings():  # one process reading a folder: that is the intent
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                load(out, storage_reader=SafeReader(self.path, meta), no_dist=True)
            return out[name]

        self._get = get

    def get(self, name: str) -> Tensor:
        return self._get(name)


def _safetensors_entries(path: Path) -> dict[str, Entry]:
    """Names, shapes and dtypes from a safetensors file's header, without reading its data."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
        entries = {
            k: (tuple(int(d) for d in v["shape"]), names[v["dtype"]])
            for k, v in header.items()
            if k != "__metadata__"
        }
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise ValueError(f"{path} is not a safetensors file this reads ({e})") from None
    return entries


def weights_for(count: int, *, ema: float | None = None, lawa: int | None = None) -> list[float]:
    """Normalised weights of ``count`` files, oldest first: uniform, EMA-like or LAWA.

    EMA-like: the recursion of :class:`~swag.EMA` over the files (the first copied), so
    file i gets (1 − β) β^(count − i), the first β^(count − 1). LAWA: the last ``lawa`` files
    equally.
    """
    if ema is not None and lawa is not None:
        raise ValueError("give at most one of --ema and --lawa")
    if ema is not None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {ema}")
        w = [(1 - ema) * ema ** (count - 1 - i) for i in range(count)]
        w[0] = ema ** (count - 1)
        return w
    if lawa is not None:
        if lawa < 1:
            raise ValueError(f"--lawa must be >= 1, got {lawa}")
        k = min(lawa, count)
        return [0.0] * (count - k) + [1.0 / k] * k
    return [1.0 / count] * count


def _check_layouts(sources: list[_Source]) -> None:
    first = sources[0]
    for s in sources[1:]:
        missing = sorted(set(first.entries) - set(s.entries))
        extra = sorted(set(s.entries) - set(first.entries))
        changed = sorted(
            n for n in first.entries if n in s.entries and first.entries[n] != s.entries[n]
        )
        if missing or extra or changed:
            parts = [
                f"missing {missing[:5]}" if missing else "",
                f"extra {extra[:5]}" if extra else "",
            ]
            parts += [
                f"{n}: {first.entries[n]} in {first.path}, {s.entries[n]} here" for n in changed[:5]
            ]
            raise ValueError(
                f"{s.path} does not match {first.path}: " + "; ".join(p for p in parts if p)
            )


def average_files(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float]) -> None:
    """Write Σ_i w_i · checkpoint_i to ``out`` (safetensors), one tensor at a time.

    Floating tensors are summed in float64 and written in their own dtype; other tensors
    (integer counters such as BatchNorm's ``num_batches_tracked``) are taken from the last file.

    Raises:
        ValueError: if the files' tensor names, shapes or dtypes differ (named), or a file is
            not a checkpoint this reads.
    """
    if len(paths) != len(weights) or not paths:
        raise ValueError(f"need one weight per file, got {len(weights)} for {len(paths)} files")
    sources = [_Source(Path(p)) for p in paths]
    _check_layouts(sources)
    names = sorted(sources[0].entries)
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "swag": "average"}}
    offset = 0
    for name in names:
        shape, dtype = sources[0].entries[name]
        if dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {dtype} cannot be written to safetensors")
        size = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    def chunks() -> Iterator[bytes]:
        yield struct.pack("<Q", len(blob)) + blob
        for name in names:
            dtype = sources[0].entries[name][1]
            if dtype.is_floating_point:
                acc = torch.zeros(sources[0].entries[name][0], dtype=torch.float64)
                for s, w in zip(sources, weights, strict=True):
                    if w:
                        acc.add_(s.get(name).to(torch.float64), alpha=w)
                t = acc.to(dtype)
            else:
                t = sources[-1].get(name)
            yield t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    _io.write_atomic(out, chunks())


def register(sub: Any) -> None:
    """Add the ``average`` subcommand to ``swag``'s subparsers."""
    p = sub.add_parser(
        "average",
        help="average checkpoint files (safetensors, torch state dicts, DCP folders)",
        description="Weighted average of checkpoints with the same tensors, streamed one "
        "tensor at a time; files are given oldest first. Writes safetensors atomically.",
    )
    p.add_argument("checkpoints", nargs="+", help="files or DCP folders, oldest first")
    p.add_argument("--out", required=True, help="the averaged safetensors file")
    p.add_argument("--ema", type=float, help="EMA-like weights with this decay")
    p.add_argument("--lawa", type=int, help="the equal average of the last LAWA files")


def run(args: argparse.Namespace) -> int:
    """Run ``swag average``; 2 on a usage or layout error, with the reason on stderr."""
    try:
        w = weights_for(len(args.checkpoints), ema=args.ema, lawa=args.lawa)
        average_files(args.checkpoints, args.out, w)
    except (ValueError, FileNotFoundError) as e:
        print(f"swag average: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(args.checkpoints)} checkpoints)")
    return 0
