"""The measurements: collect, sample, prediction, memory, and the scale levers.

Every timing is interleaved with its reference (see :mod:`benchmarks.timing`) and reported as
a ratio measured in the same rounds. Each function returns rows: plain dicts, ready for JSON.
"""

from __future__ import annotations

import gc
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import peers
from benchmarks.models import MODELS, make_iterates, num_params
from benchmarks.timing import Timing, interleaved, peak_extra_bytes, ratio

Row = dict[str, Any]

ITERATES = 1
"""How many distinct iterates the timed collects cycle through. One: every implementation
collects the same model, whose values do not change the work done; a single model object is
also what a training loop passes, so swag's cached parameter binding is exercised as in use."""


@dataclass(frozen=True)
class Config:
    """How hard to measure."""

    device: torch.device
    rounds: int = 15
    round_seconds: float = 0.05
    with_peers: bool = True
    compiled: bool = True  # also time Collector(compiled=True)
    samples: int = 10  # S, for prediction
    growth_collects: int = 100_000


def _inner(fn: Callable[[], object], cfg: Config) -> int:
    """Calls per round so that one round lasts about ``cfg.round_seconds``."""
    start = time.perf_counter()
    fn()
    if cfg.device.type == "cuda":
        torch.cuda.synchronize(cfg.device)
    return max(1, min(200, round(cfg.round_seconds / max(time.perf_counter() - start, 1e-6))))


def _versus(
    fn: Callable[[], object], ref: Callable[[], object], cfg: Config
) -> tuple[Timing, Timing]:
    """Time ``fn`` and ``ref`` interleaved; returns their timings."""
    inner = max(_inner(fn, cfg), _inner(ref, cfg)) if cfg.rounds > 1 else 1
    t = interleaved({"fn": fn, "ref": ref}, cfg.device, rounds=cfg.rounds, inner=inner, warmup=2)
    return t["fn"], t["ref"]


def _cycle(collect: Callable[[nn.Module], None], iterates: list[nn.Module]) -> Callable[[], None]:
    state = {"i": 0}

    def step() -> None:
        state["i"] = (state["i"] + 1) % len(iterates)
        collect(iterates[state["i"]])

    return step


def _vectors(count: int, size: int, device: torch.device) -> list[Tensor]:
    g = torch.Generator(device).manual_seed(0)
    return [torch.randn(size, generator=g, device=device) for _ in range(count)]


def bandwidth_collect(size: int, device: torch.device) -> Callable[[], None]:
    """The collect reference: two ``torch.add(out=)`` over P, moving 6·P floats."""
    a, b, c, d, e = _vectors(5, size, device)

    def ref() -> None:
        torch.add(a, b, out=c)
        torch.add(d, e, out=a)

    return ref


def _row(section: str, model: str, size: int, impl: str, t: Timing, **kw: Any) -> Row:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "section": section,
        "model": model,
        "P": size,
        "impl": impl,
        "seconds": t.median,
        "load_average_1min": load,  # other processes' load makes the row noisier
        **kw,
    }


def collect_rows(name: str, max_rank: int, cfg: Config, loaded: dict[str, Any]) -> list[Row]:
    """Steady-state ``collect()`` (ring full) of every implementation vs the bandwidth reference.

    Each implementation also gets its held memory and its peak extra memory during one collect,
    both in units of 4·P bytes (one float32 copy of the parameters).
    """
    iterates = make_iterates(name, ITERATES, cfg.device)
    size = num_params(iterates[0])
    ref = bandwidth_collect(size, cfg.device)
    factories: dict[str, Callable[[], peers.Impl]] = {
        "swag": lambda: peers.ours(iterates[0], max_rank),
    }
    if cfg.compiled:
        factories["swag(compiled)"] = lambda: peers.ours(iterates[0], max_rank, compiled=True)
    if max_rank == 0:
        factories["AveragedModel"] = lambda: peers.averaged_model(iterates[0], foreach=False)
        factories["AveragedModel(foreach)"] = lambda: peers.averaged_model(
            iterates[0], foreach=True
        )
    if cfg.with_peers:
        sg, tu = loaded.get("swa_gaussian"), loaded.get("torch_uncertainty")
        if isinstance(sg, types.ModuleType):
            build, device = MODELS[name].build, cfg.device
            factories["swa_gaussian"] = lambda: peers.swa_gaussian(sg, build, device, max_rank)
        if isinstance(tu, types.ModuleType):
            factories["tu.SWAG"] = lambda: peers.tu_swag(tu, iterates[0], max_rank)
            if max_rank == 0:
                swa = peers.tu_swa_module(tu)
                factories["tu.SWA"] = lambda: peers.tu_swa(swa, iterates[0])
    rows: list[Row] = []
    for impl_name, factory in factories.items():
        impl = factory()
        step = _cycle(impl.collect, iterates)
        start = time.perf_counter()
        step()
        step()  # the first steady-state collect: compiles, for the compiled variant
        first = time.perf_counter() - start
        for _ in range(max_rank):  # steady state: the ring is full
            step()
        t, t_ref = _versus(step, ref, cfg)
        peak = peak_extra_bytes(step, cfg.device)
        rows.append(
            _row(
                "collect",
                name,
                size,
                impl_name,
                t,
                K=max_rank,
                ratio=ratio(t, t_ref),
                ratio_to="bandwidth",
                reference_seconds=t_ref.median,
                held_x4P=peers.held_bytes(impl.held()) / (4 * size),
                peak_extra_x4P=None if peak is None else peak / (4 * size),
                first_two_collects_seconds=first,
                note=impl.note,
            )
        )
        del impl, step
        gc.collect()
    return rows


def _posterior_setup(name: str, max_rank: int, cfg: Config) -> tuple[list[nn.Module], Any]:
    iterates = make_iterates(name, ITERATES, cfg.device)
    impl = peers.ours(iterates[0], max_rank)
    step = _cycle(impl.collect, iterates)
    for _ in range(max_rank + 2):
        step()
    return iterates, impl.extra["obj"]


def sample_rows(name: str, max_rank: int, cfg: Config, loaded: dict[str, Any]) -> list[Row]:
    """``sample()`` as a flat vector and written into a model, vs ``randn`` plus bandwidth.

    The reference draws ``torch.randn(P)`` and then moves the bytes a sample must move: it reads
    the mean, σ and the K×P deviations and writes P floats (``torch.add`` and ``torch.sum``).
    """
    iterates, collector = _posterior_setup(name, max_rank, cfg)
    size = collector.layout.size
    peak_posterior = peak_extra_bytes(collector.posterior, cfg.device)
    post = collector.posterior()
    del collector
    gc.collect()
    g = torch.Generator(cfg.device).manual_seed(0)
    out = torch.empty(size, device=cfg.device)

    def randn() -> None:
        torch.randn(size, generator=g, device=cfg.device)

    def ref() -> None:
        torch.randn(size, generator=g, device=cfg.device)
        torch.add(post.mean, post.std, out=out)
        torch.sum(post.deviations, dim=0, out=out)

    target = iterates[-1]
    fns: dict[str, tuple[Callable[[], object], str]] = {
        "swag.sample": (lambda: post.sample(generator=g), "flat vector"),
        "swag.sample+apply_": (
            lambda: post.apply_(target, post.sample(generator=g)),
            "written into the model",
        ),
        "randn(P)": (randn, "reference part"),
    }
    rows: list[Row] = []
    held = sum(t.numel() * t.element_size() for t in (post.mean, post.std, post.deviations))
    for impl_name, (fn, note) in fns.items():
        t, t_ref = _versus(fn, ref, cfg)
        peak = peak_extra_bytes(fn, cfg.device)
        extra = None
        if peak is not None:
            extra = (peak - (4 * size if impl_name == "swag.sample" else 0)) / (4 * size)
        rows.append(
            _row(
                "sample",
                name,
                size,
                impl_name,
                t,
                K=post.rank,
                ratio=ratio(t, t_ref),
                ratio_to="bandwidth+randn",
                reference_seconds=t_ref.median,
                held_x4P=held / (4 * size) if impl_name.startswith("swag") else None,
                peak_extra_x4P=extra,
                note=note,
            )
        )
    rows[0]["posterior_peak_x4P"] = None if peak_posterior is None else peak_posterior / (4 * size)
    if cfg.with_peers:
        rows += _peer_sample_rows(name, size, max_rank, cfg, loaded, iterates, ref)
    return rows


def _peer_sample_rows(
    name: str,
    size: int,
    max_rank: int,
    cfg: Config,
    loaded: dict[str, Any],
    iterates: list[nn.Module],
    ref: Callable[[], None],
) -> list[Row]:
    rows: list[Row] = []
    factories: dict[str, Callable[[], tuple[peers.Impl, Callable[[], object]]]] = {}
    sg, tu = loaded.get("swa_gaussian"), loaded.get("torch_uncertainty")
    if isinstance(sg, types.ModuleType):

        def make_sg() -> tuple[peers.Impl, Callable[[], object]]:
            impl = peers.swa_gaussian(sg, MODELS[name].build, cfg.device, max_rank)
            obj = impl.extra["obj"]
            return impl, lambda: obj.sample(scale=0.5, cov=True)

        factories["swa_gaussian"] = make_sg
    if isinstance(tu, types.ModuleType):

        def make_tu() -> tuple[peers.Impl, Callable[[], object]]:
            impl = peers.tu_swag(tu, iterates[0], max_rank)
            peer = impl.extra["obj"]
            return impl, lambda: peer.sample(0.5)

        factories["tu.SWAG"] = make_tu
    for impl_name, factory in factories.items():  # one peer alive at a time
        impl, fn = factory()
        step = _cycle(impl.collect, iterates)
        for _ in range(max_rank + 2):
            step()
        t, t_ref = _versus(fn, ref, cfg)
        peak = peak_extra_bytes(fn, cfg.device)
        rows.append(
            _row(
                "sample",
                name,
                size,
                impl_name,
                t,
                K=max_rank,
                ratio=ratio(t, t_ref),
                ratio_to="bandwidth+randn",
                reference_seconds=t_ref.median,
                peak_extra_x4P=None if peak is None else peak / (4 * size),
                note="into its own model copy",
            )
        )
        del impl, fn, step
        gc.collect()
    return rows
