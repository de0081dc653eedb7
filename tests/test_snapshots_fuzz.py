"""File fuzzing for :class:`swag.snapshots.Snapshots` files (issue 18), as
tests/test_guarantee_file_fuzz.py does for the core's files: every truncation, a byte flip at every
position, sealed metadata and tensor edits. Each case loads the saved snapshots bit for bit or
raises ``ValueError`` naming the file; any other exception fails, and the model handed to the loader
is never written.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from swag.snapshots import Snapshots
from tests.test_guarantee_file_fuzz import _sealed, _split, edits, put, tensor_edits

SEED = 11


def make() -> tuple[nn.Module, Snapshots]:
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    snaps = Snapshots(model, max_snapshots=3)
    for _ in range(2):  # 2 of 3 rows taken: the count matters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snaps.collect()
    return model, snaps


MODEL, SNAPS = make()


def outcome(path: Path) -> str:
    """'' if ``path`` loads SNAPS exactly; the message if refused (which must name the file)."""
    before = [p.clone() for p in MODEL.parameters()]
    try:
        loaded = Snapshots.load(path, MODEL)
    except ValueError as e:
        assert path.name in str(e), f"the error does not name the file: {e}"
        message = str(e)
    else:
        assert loaded.n == SNAPS.n and loaded.layout == SNAPS.layout
        assert loaded.snapshots.dtype == SNAPS.snapshots.dtype
        assert torch.equal(loaded.snapshots, SNAPS.snapshots), "loaded different snapshots"
        message = ""
    assert all(map(torch.equal, before, MODEL.parameters()))  # the loader never writes it
    return message


def written(folder: Path) -> tuple[Path, bytes]:
    path = folder / "snapshots.safetensors"
    SNAPS.save(path)
    return path, path.read_bytes()


def test_truncations_and_byte_flips_are_refused(tmp_path: Path) -> None:
    path, blob = written(tmp_path)
    assert outcome(path) == ""
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = random.Random(SEED)
    refused_cuts = refused_data = exact_header = 0
    for pos in range(len(blob)):
        put(path, blob[:pos])
        refused_cuts += bool(outcome(path))
        damaged = bytearray(blob)
        damaged[pos] ^= rng.randrange(1, 256)
        put(path, bytes(damaged))
        result = outcome(path)
        if pos >= header_end:
            refused_data += bool(result)
        else:
            exact_header += not result
    assert refused_cuts == len(blob)  # a prefix never holds the whole object
    assert refused_data == len(blob) - header_end  # every data flip is caught (checksum)
    # only the header's padding spaces may be flipped into other whitespace harmlessly
    assert exact_header <= header_end - 8 - len(blob[8:header_end].rstrip(b" "))


def test_sealed_metadata_and_tensor_edits_are_refused(tmp_path: Path) -> None:
    path, blob = written(tmp_path)
    tensors, meta = _split(blob)
    exact = refused = 0
    for _key, edited in edits(meta):
        put(path, _sealed(tensors, edited))
        message = outcome(path)
        exact, refused = exact + (not message), refused + bool(message)
    assert exact <= 2 * len(meta) and refused > 20 * len(meta)
    cases = 0
    # the file keeps the buffer's dtype (Snapshots(dtype=torch.float16) is legitimate), so only
    # non-floating dtypes are foreign here
    for edited_tensors in tensor_edits(tensors, fixed=False):
        put(path, _sealed(edited_tensors, meta))
        assert outcome(path), "an edited tensor was loaded"
        cases += 1
    put(path, _sealed(tensors, dict(meta, n="4")))  # more snapshots than rows
    assert "metadata field 'n' must be in [0, 3]" in outcome(path)
    assert cases > 5


def test_a_nan_row_inside_the_count_is_refused(tmp_path: Path) -> None:
    path, blob = written(tmp_path)
    tensors, meta = _split(blob)
    rows = tensors["snapshots"].clone()
    rows[0, 0] = float("nan")
    put(path, _sealed({"snapshots": rows}, meta))
    assert "non-finite" in outcome(path)  # the one validator's wording
