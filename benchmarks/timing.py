"""Timing and memory measurement that works on CPU and CUDA alike."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one function: the median over rounds, and each round's value."""

    median: float
    rounds: tuple[float, ...]


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int = 15,
    inner: int = 5,
    warmup: int = 3,
) -> dict[str, Timing]:
    """Time several functions in alternation, so that machine noise hits them alike.

    Each round calls every function ``inner`` times in a row and records the mean time per call;
    the result is the median over ``rounds``. Ratios between functions are best taken per round
    (:func:`ratio`), which cancels slow drift in the machine's load.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            per_round[name].append((time.perf_counter() - start) / inner)
    return {
        name: Timing(statistics.median(values), tuple(values)) for name, values in per_round.items()
    }


def ratio(num: Timing, den: Timing) -> float:
    """The median over rounds of ``num / den``, each round's pair measured back to back."""
    return statistics.median(a / b for a, b in zip(num.rounds, den.rounds, strict=True))


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """The most memory ``fn`` holds at once beyond what was allocated before it started.

    See :func:`allocations`; ``None`` where they cannot be measured.
    """
    result = allocations(fn, device)
    return None if result is None else result[0]


def allocations(fn: Callable[[], object], device: torch.device) -> tuple[int, int] | None:
    """``(peak, net)`` bytes allocated by ``fn``: the most held at once, and what is left after.

    On CUDA these come from ``torch.cuda.max_memory_allocated`` and ``memory_allocated``. On
    CPU, Python's tracemalloc does not see torch's allocator, and RSS mixes in the C
    allocator's caching; instead ``torch.profiler`` with ``profile_memory=True`` records every
    allocation and free made through c10's CPU allocator (all tensor storage), in time order:
    the peak is the largest running sum, the net is the final sum. Memory that ``fn`` returns
    counts. ``None`` if this torch build's profiler does not expose the records.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        net = torch.cuda.memory_allocated(device) - before
        del out
        return int(peak), int(net)
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    # Kineto (the profiler's backend) writes "USDT ... profiler_start/stop" lines to stderr on
    # every profile, hundreds per run, burying the tables; it reads its log level from the
    # environment when it starts, at the first profile. 6 is above its highest level (USDT = 5).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    peak = live = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak, live
