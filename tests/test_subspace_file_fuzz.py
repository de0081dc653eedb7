"""File fuzzing for SubspacePosterior files (an ESS chain and a VI Gaussian), as in
tests/test_guarantee_file_fuzz.py: every truncation, a byte flip at every position, every metadata
field removed or set to garbage and every tensor edited (re-sealed with a valid checksum, so the
field checks and not the checksum must catch them). Each case loads the saved object bit for bit or
raises ValueError naming the file; any other exception fails the test.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import swag
from swag.subspace import Subspace, SubspacePosterior
from tests.test_guarantee_file_fuzz import _sealed, _split, edits, put, tensor_edits

SEED = 11


def _posteriors() -> dict[str, SubspacePosterior]:
    torch.manual_seed(SEED)
    model = nn.Linear(3, 2)
    collector = swag.Collector(model, max_rank=3)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _ in range(4):
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            collector.collect()
    sub = Subspace.pca(collector, 2)
    tril = torch.tensor([[0.5, 0.0], [0.2, 0.3]])
    return {
        "ess": SubspacePosterior(sub, chain=torch.randn(3, 2, generator=g), temperature=0.5),
        "vi": SubspacePosterior(sub, loc=torch.tensor([0.1, -0.2]), scale_tril=tril, prior_std=2.0),
    }


POSTERIORS = _posteriors()


def same(a: SubspacePosterior, b: SubspacePosterior) -> bool:
    """Equal bit for bit: tensors (and dtypes), layout, kinds, temperature and prior."""

    def eq(x: Tensor | None, y: Tensor | None) -> bool:
        if x is None or y is None:
            return x is y
        return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)

    sa, sb = a.subspace, b.subspace
    return (
        (sa.layout, sa.kind, a.method, a.temperature, a.prior_std)
        == (sb.layout, sb.kind, b.method, b.temperature, b.prior_std)
        and eq(sa.shift, sb.shift)
        and eq(sa.basis, sb.basis)
        and all(eq(getattr(a, k), getattr(b, k)) for k in ("chain", "loc", "scale_tril"))
    )


def check(name: str, path: Path, meta: dict[str, str] | None = None) -> str:
    """Load ``path``: the saved posterior exactly, or a ValueError naming the file (its text).

    With the file's ``meta``, a crafted file whose temperature or prior is another canonical
    float may load that value instead (nothing else may differ).
    """
    try:
        loaded = SubspacePosterior.load(path)
    except ValueError as e:
        assert path.name in str(e), f"{name}: the error does not name the file: {e}"
        return str(e)
    want = POSTERIORS[name]
    if meta is not None:
        numbers = {k: float(meta[k]) for k in ("temperature", "prior_std")}
        want = dataclasses.replace(want, **numbers)
    assert same(loaded, want), f"{name}: {path.name} loaded a different posterior"
    return ""


@pytest.fixture(params=sorted(POSTERIORS))
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, bytes]:
    name = request.param
    path = tmp_path / f"subspace_{name}.safetensors"
    POSTERIORS[name].save(path)
    assert check(name, path) == ""  # a clean file loads exactly
    return name, path, path.read_bytes()


def test_every_truncation_is_refused(written: tuple[str, Path, bytes]) -> None:
    name, path, blob = written
    for cut in range(len(blob)):
        put(path, blob[:cut])
        assert check(name, path), cut


def test_a_byte_flip_anywhere_is_refused_or_harmless(written: tuple[str, Path, bytes]) -> None:
    name, path, blob = written
    header_end = 8 + int.from_bytes(blob[:8], "little")
    rng = random.Random(SEED)
    exact = 0
    for pos in range(len(blob)):
        damaged = bytearray(blob)
        damaged[pos] ^= rng.randrange(1, 256)
        put(path, bytes(damaged))
        message = check(name, path)
        assert message or pos < header_end, f"a flip in the data at {pos} was not caught"
        exact += not message
    assert exact <= header_end - 8 - len(blob[8:header_end].rstrip(b" "))


def test_metadata_edits_are_refused_naming_the_field(written: tuple[str, Path, bytes]) -> None:
    name, path, blob = written
    tensors, meta = _split(blob)
    cases = loaded = 0
    for key, edited in edits(meta):
        put(path, _sealed(tensors, edited))
        message = check(name, path, edited if key in ("temperature", "prior_std") else None)
        cases += 1
        named = key in message or "tensor" in message or key in ("format", "kind")
        assert not message or named, f"{key}: {message}"
        loaded += not message
    assert cases > 20 * len(meta)
    # GARBAGE holds two canonical floats > 0 ("1e3" is not canonical, "-1" is negative):
    # "1.5" for each of the two numbers, and version "1" (a checksummed version-1 file)
    assert loaded <= 3


@pytest.mark.parametrize("value", ["1.5", "1e3", "0.0", "-1.0", "nan", "inf", " 2.0", "2"])
def test_temperature_and_prior_parse_only_as_repr_writes_them(
    written: tuple[str, Path, bytes], value: str
) -> None:
    _, path, blob = written
    tensors, meta = _split(blob)
    for key in ("temperature", "prior_std"):
        put(path, _sealed(tensors, {**meta, key: value}))
        try:
            loaded = SubspacePosterior.load(path)
        except ValueError as e:
            assert key in str(e) and path.name in str(e)
            assert not (
                math.isfinite(float(value)) and float(value) > 0 and repr(float(value)) == value
            )
        else:  # a crafted file with another canonical value: that value, nothing else changed
            assert repr(getattr(loaded, key)) == value


def test_tensor_edits_are_refused(written: tuple[str, Path, bytes]) -> None:
    name, path, blob = written
    tensors, meta = _split(blob)
    cases = 0
    for edited in tensor_edits(tensors, fixed=True):
        put(path, _sealed(edited, meta))
        assert check(name, path), sorted(edited)
        cases += 1
    # NaN in the inferred z, a scale_tril that is not lower triangular with a positive diagonal
    z = "chain" if name == "ess" else "loc"
    extra = [{**tensors, z: tensors[z].clone().fill_(math.nan)}]
    if name == "vi":
        extra += [
            {**tensors, "scale_tril": tensors["scale_tril"].T.contiguous()},
            {**tensors, "scale_tril": -tensors["scale_tril"]},
        ]
    else:  # a VI file's tensors under method "ess"
        extra += [{**tensors, "loc": torch.zeros(2), "scale_tril": torch.eye(2)}]
    for edited in extra:
        put(path, _sealed(edited, meta))
        assert check(name, path)
        cases += 1
    assert cases > 5 * len(tensors)
