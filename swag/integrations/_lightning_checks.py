"""Argument and strategy checks of the Lightning callback (needs Lightning)."""

from __future__ import annotations

import math

from swag.evaluation.bn import has_batchnorm as has_batchnorm  # the one test; re-exported here
from swag.integrations._args import check_rank_and_start, missing_extra

try:
    from lightning.pytorch.strategies import (
        DDPStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("lightning", "lightning") from exc

EPOCH = "epoch"


def check_strategy(strategy: object) -> None:
    """Raise a ValueError naming the fix when the callback cannot run under ``strategy``."""
    name = type(strategy).__name__
    fix = "use strategy='ddp' (statistics replicated, or shard=True) or ModelParallelStrategy"
    if "XLA" in name:
        raise ValueError(f"SWAGCallback does not support {name}; {fix}")
    if isinstance(strategy, DDPStrategy):
        method = getattr(strategy, "_start_method", "popen")
        if method != "popen":
            raise ValueError(
                f"SWAGCallback does not support DDP launched by {method} (ddp_spawn, ddp_fork, "
                "ddp_notebook): the statistics would stay in the worker processes. Use "
                "strategy='ddp' (run the script with torchrun or let Lightning launch it)"
            )
        return
    if isinstance(strategy, ModelParallelStrategy | SingleDeviceStrategy):
        return
    detail = {
        "FSDPStrategy": " (FSDP1 flattens the parameters; use ModelParallelStrategy with "
        "fully_shard, i.e. FSDP2, on the data-parallel mesh)",
        "DeepSpeedStrategy": " (DeepSpeed partitions parameters its own way)",
    }.get(name, "")
    raise ValueError(f"SWAGCallback does not support {name}{detail}; {fix}")


def check_args(
    max_rank: object,
    start: object,
    collect_every: object,
    swa_lr: object,
    anneal_steps: object,
    anneal_strategy: object,
) -> None:
    """The schedule arguments of the Lightning callback (TypeError / ValueError, by name)."""
    check_rank_and_start(max_rank, start, "epoch")
    if collect_every != EPOCH:
        if isinstance(collect_every, bool) or not isinstance(collect_every, int):
            raise TypeError(f"collect_every must be 'epoch' or an int >= 1, got {collect_every!r}")
        if collect_every < 1:
            raise ValueError(f"collect_every must be 'epoch' or an int >= 1, got {collect_every!r}")
    if swa_lr is not None:
        if isinstance(swa_lr, bool) or not isinstance(swa_lr, int | float):
            raise TypeError(f"swa_lr must be a float > 0 or None, got {swa_lr!r}")
        if not 0 < swa_lr < math.inf:
            raise ValueError(f"swa_lr must be a float > 0 or None, got {swa_lr!r}")
    if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int):
        raise TypeError(
            f"anneal_steps must be an int >= 0 (optimiser steps, not epochs), got {anneal_steps!r}"
        )
    if anneal_steps < 0:
        raise ValueError(f"anneal_steps must be an int >= 0, got {anneal_steps!r}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
