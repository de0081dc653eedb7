"""swag.save / swag.load (issue 19): one round trip for every object swag writes, files of
today's format that must keep loading, and the one validator's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as st_load

import swag
from swag.persistence import _io
from tests.kinds import KINDS, collector_and_model, fixture_objects, make_model, snapshots_and_model

FIXTURES = Path(__file__).parent / "fixtures"


def _state(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, swag.Posterior):
        return obj.to_state()[0]
    assert isinstance(obj, torch.nn.Module)
    return {k: v for k, v in obj.state_dict().items() if isinstance(v, torch.Tensor)}


def _predict(post: swag.Posterior) -> torch.Tensor:
    xs = [torch.randn(6, 4, generator=torch.Generator().manual_seed(0))]
    return swag.predict(post, make_model(), xs, num_samples=4,
                        generator=torch.Generator().manual_seed(11))  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_posterior_kind_round_trips_exactly(kind: str, tmp_path: Path) -> None:
    post = KINDS[kind]()
    swag.save(post, tmp_path / "p.safetensors")
    back = swag.load(tmp_path / "p.safetensors")
    assert type(back) is type(post)
    assert isinstance(back, swag.Posterior)
    before, after = _state(post), _state(back)
    assert before.keys() == after.keys()
    for name, t in before.items():
        assert torch.equal(after[name], t), name
    assert back.to_state()[1] == post.to_state()[1]  # metadata, the layout included
    torch.testing.assert_close(_predict(back), _predict(post), rtol=0, atol=0)


@pytest.mark.parametrize("which", ["collector", "snapshots"])
def test_collector_and_snapshots_round_trip_onto_a_model(which: str, tmp_path: Path) -> None:
    obj, model = collector_and_model() if which == "collector" else snapshots_and_model()
    swag.save(obj, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="pass the model it is attached to, model="):
        swag.load(tmp_path / "c.safetensors")
    back = swag.load(tmp_path / "c.safetensors", model)
    assert type(back) is type(obj)
    for name, t in _state(obj).items():
        assert torch.equal(_state(back)[name], t), name
    assert back.n == obj.n  # type: ignore[attr-defined]


@pytest.mark.parametrize("stem", sorted(fixture_objects()))
def test_committed_files_of_todays_format_keep_loading(stem: str) -> None:
    path = FIXTURES / f"{stem}.safetensors"
    obj = fixture_objects()[stem]
    model = make_model() if not isinstance(obj, swag.Posterior) else None
    back = swag.load(path, model)
    assert type(back) is type(obj)
    # the builders are deterministic: the file holds what they build today (up to BLAS
    # summation order in the subspace fits, hence the float32 tolerance)
    for name, t in _state(obj).items():
        torch.testing.assert_close(_state(back)[name], t, rtol=1e-5, atol=1e-6, msg=name)


def test_sharded_and_foreign_objects_are_refused_naming_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"swag\.save writes posteriors, Collector and Snapshots"):
        swag.save({"a": 1}, tmp_path / "x.safetensors")
    _io.save_file(tmp_path / "odd.safetensors", "no_such_kind", {}, {})
    with pytest.raises(ValueError, match="'no_such_kind', which swag cannot read; known kinds"):
        swag.load(tmp_path / "odd.safetensors")


@pytest.mark.parametrize("field", ["std", "m2", "mean"])
def test_the_one_validator_refuses_non_finite_and_negative_statistics(
    field: str, tmp_path: Path
) -> None:
    """A file whose checksum is right but whose statistics are impossible (written by a buggy
    tool): NaN anywhere, or a negative σ or M2, is refused by every loader."""
    obj: object
    if field == "m2":
        obj, model = collector_and_model()
    else:
        obj, model = KINDS["SWAG"](), None
    path = tmp_path / "f.safetensors"
    swag.save(obj, path)
    tensors = st_load(str(path))
    meta = _io._read_metadata(path.read_bytes())
    bad = tensors[field].clone()
    bad[0] = float("nan") if field == "mean" else -1.0
    tensors[field] = bad
    meta.pop(_io.CHECKSUM)
    kind = meta.pop("kind")
    for key in ("format", "version"):
        meta.pop(key)
    _io.save_file(path, kind, tensors, meta)
    problem = "non-finite" if field == "mean" else "negative"
    with pytest.raises(ValueError, match=f"tensor '{field}' has {problem} entries"):
        swag.load(path, model)
