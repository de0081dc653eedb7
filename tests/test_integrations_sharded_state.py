"""A sharded callback's state with an averaging rule (LAWA's window), at W = 2 under gloo.

The callbacks' state holds whole statistics, so a run can resume at another world size: a
sharded collector assembles its rows (one ``all_gather`` per statistic, and one for the rule's
window) and takes back its own on load. Here two CPU processes check that the assembled state
of a ``shard=True`` collector with ``average=swag.LAWA(3)`` equals an unsharded collector's,
bit for bit, and that loading it into a fresh sharded collector continues exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import swag
from swag.integrations import _state
from tests.kinds import make_model

WORLD = 2


def _walk(model: torch.nn.Module, collectors: list[swag.Collector], seed: int, steps: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            for c in collectors:
                c.collect()


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    try:
        rule = swag.LAWA(3)
        model = make_model()  # the same on every rank
        sharded = swag.Collector(model, 2, shard=True, average=rule)
        whole = swag.Collector(model, 2, average=rule)
        _walk(model, [sharded, whole], seed=0, steps=5)
        got, ref = _state.collector_state(sharded), _state.collector_state(whole)
        checks = {
            "meta": got["meta"] == ref["meta"],
            "tensors": got["tensors"].keys() == ref["tensors"].keys()
            and all(torch.equal(t, ref["tensors"][k]) for k, t in got["tensors"].items()),
            "held": sharded.averaging.ring.shape[1] < whole.averaging.ring.shape[1],  # type: ignore[union-attr]
        }
        fresh = swag.Collector(model, 2, shard=True, average=rule)
        _state.load_collector_state(fresh, ref, "the whole state")
        _walk(model, [sharded, fresh, whole], seed=1, steps=2)
        a, b = sharded.sharded_posterior().full(), fresh.sharded_posterior().full()
        c = whole.posterior()
        checks["resumed"] = all(
            torch.equal(getattr(a, n), getattr(b, n)) and torch.equal(getattr(a, n), getattr(c, n))
            for n in ("mean", "std", "deviations")
        )
        Path(out, f"{rank}.json").write_text(json.dumps(checks))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: about 10 s on 2 busy cores
@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch without gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous")
def test_a_sharded_state_with_a_rule_is_whole_and_resumes_exactly(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        checks = json.loads((tmp_path / f"{rank}.json").read_text())
        assert checks == {"meta": True, "tensors": True, "held": True, "resumed": True}, rank
