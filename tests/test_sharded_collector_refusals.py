"""A sharded collector refuses what needs the whole statistics with one exception type
(issue 20, 2): ``posterior()`` and ``save()`` both raise ``RuntimeError`` (the collector's state,
not an argument, is what is wrong), each naming what to use instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from swag import Collector


@pytest.fixture
def group(tmp_path: Path) -> Iterator[None]:
    """A one-rank gloo process group in this process (no torchrun)."""
    store = tmp_path / "store"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def sharded(group: None) -> Collector:
    model = nn.Linear(3, 2)
    collector = Collector(model, max_rank=2, shard=True)
    collector.collect()
    assert collector.plan is not None
    return collector


def test_posterior_of_a_sharded_collector_is_a_runtime_error(sharded: Collector) -> None:
    with pytest.raises(RuntimeError, match=r"sharded_posterior\(\)"):
        sharded.posterior()


def test_save_of_a_sharded_collector_is_the_same_runtime_error(
    sharded: Collector, tmp_path: Path
) -> None:
    path = tmp_path / "c.safetensors"
    with pytest.raises(RuntimeError, match=r"swag\.distributed\.save\(collector, directory\)"):
        sharded.save(path)
    assert not path.exists()


def test_the_sharded_part_still_works(sharded: Collector) -> None:
    part = sharded.sharded_posterior()
    whole = part.full()  # one all_gather over the one rank: the whole posterior
    torch.testing.assert_close(whole.mean, part.mean)
