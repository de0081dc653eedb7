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
