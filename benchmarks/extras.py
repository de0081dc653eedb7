"""Prediction throughput, the scale levers (bf16 ring, vmap BMA), and the no-growth check."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.optim.swa_utils import update_bn

import swag
from benchmarks import peers
from benchmarks.models import MODELS, make_iterates
from benchmarks.suites import (
    ITERATES,
    Config,
    Row,
    _cycle,
    _posterior_setup,
    _row,
    _versus,
    bandwidth_collect,
)
from benchmarks.timing import allocations, ratio
from swag import Collector, predict


def _batches(name: str, cfg: Config, count: int = 4, size: int = 128) -> list[Tensor]:
    g = torch.Generator(cfg.device).manual_seed(1)
    shape = MODELS[name].input_shape
    return [torch.randn(size, *shape, generator=g, device=cfg.device) for _ in range(count)]


def predict_rows(name: str, cfg: Config) -> list[Row]:
    """``swag.predict`` over S samples: throughput, and its overhead over the work it must do.

    Three rows per model: against S plain forward passes (throughput; the BMA side also draws
    and writes the S samples), and against the minimal hand-written loop doing the same work
    (per sample: ``sample``, ``apply_``, for a BatchNorm model ``torch.optim.swa_utils.update_bn``
    on the refresh batches, then the forward passes), without and, for models with BatchNorm,
    with the BN refresh. The overhead rows are the ones the goal (≤ 1.1) is about.
    """
    iterates, collector = _posterior_setup(name, 20, cfg)
    post = collector.posterior()
    model = iterates[-1].eval()
    loader = _batches(name, cfg)
    refresh = _batches(name, cfg, count=4)
    s = cfg.samples
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def bma(bn: bool) -> Callable[[], None]:
        def run() -> None:
            g = torch.Generator(cfg.device).manual_seed(0)
            predict(
                post,
                model,
                loader,
                num_samples=s,
                generator=g,
                options=swag.PredictOptions(bn=swag.BNRefresh(refresh) if bn else False),
            )

        return run

    def by_hand(bn: bool) -> Callable[[], None]:
        work = copy.deepcopy(model)

        @torch.no_grad()
        def run() -> None:
            g = torch.Generator(cfg.device).manual_seed(0)
            for _ in range(s):
                post.apply_(work, post.sample(generator=g))
                if bn:
                    update_bn(refresh, work)
                work.eval()
                for x in loader:
                    work(x)

        return run

    @torch.no_grad()
    def plain() -> None:
        for _ in range(s):
            for x in loader:
                model(x)

    inputs = s * sum(len(x) for x in loader)
    size = collector.layout.size
    t, t_ref = _versus(bma(False), plain, cfg)
    rows = [
        _row(
            "predict",
            name,
            size,
            "swag.predict",
            t,
            S=s,
            ratio=ratio(t, t_ref),
            ratio_to=f"{s} plain forward passes",
            reference_seconds=t_ref.median,
            throughput_per_s=inputs / t.median,
            note="includes drawing the S samples",
        )
    ]
    for bn in (False, True) if has_bn else (False,):
        t, t_ref = _versus(bma(bn), by_hand(bn), cfg)
        what = "sample + apply_ + update_bn + forward" if bn else "sample + apply_ + forward"
        rows.append(
            _row(
                "predict",
                name,
                size,
                "swag.predict, BN refresh" if bn else "swag.predict",
                t,
                S=s,
                ratio=ratio(t, t_ref),
                ratio_to=f"{s} × ({what}) by hand",
                reference_seconds=t_ref.median,
                throughput_per_s=inputs / t.median,
                note=f"BN refreshed on {len(refresh)} batches" if bn else "",
            )
        )
    return rows


def vmap_rows(name: str, cfg: Config) -> list[Row]:
    """BMA forward of S pre-drawn samples: a loop of ``apply_`` + forward vs one vmapped call."""
    iterates, collector = _posterior_setup(name, 20, cfg)
    post = collector.posterior()
    layout = collector.layout
    model = iterates[-1].eval()
    x = _batches(name, cfg, count=1)[0]
    thetas = post.sample(cfg.samples, generator=torch.Generator(cfg.device).manual_seed(0))
    stacked = dict(zip(layout.names, layout.split(thetas), strict=True))
    buffers = dict(model.named_buffers())

    def one(params: dict[str, Tensor], inputs: Tensor) -> Tensor:
        out: Tensor = functional_call(model, (params, buffers), (inputs,))
        return out

    batched = vmap(one, in_dims=(0, None))

    @torch.no_grad()
    def loop() -> None:
        for theta in thetas:
            post.apply_(model, theta)
            model(x)

    @torch.no_grad()
    def vmapped() -> None:
        batched(stacked, x)

    t, t_ref = _versus(vmapped, loop, cfg)
    return [
        _row(
            "lever",
            name,
            layout.size,
            "vmap BMA",
            t,
            S=cfg.samples,
            ratio=ratio(t, t_ref),
            ratio_to="loop of apply_ + forward",
            reference_seconds=t_ref.median,
            note=f"batch {len(x)}, samples pre-drawn",
        )
    ]


def _gram_error(
    exact: Tensor, approx: Tensor, var: Tensor, k: int, chunk: int = 1 << 18
) -> tuple[float, float]:
    """Relative Frobenius errors of D̂ᵀD̂ and of diag σ² + D̂ᵀD̂/(K−1), via K×K Gram matrices.

    ‖AᵀA − BᵀB‖²_F = ‖AAᵀ‖²_F + ‖BBᵀ‖²_F − 2‖ABᵀ‖²_F, so nothing P×P is formed; the K×K
    products are accumulated in float64 over column chunks, so no float64 K×P copy either.
    """
    aa = exact.new_zeros(k, k, dtype=torch.float64)
    bb, ab = aa.clone(), aa.clone()
    cross = torch.zeros((), dtype=torch.float64, device=exact.device)
    sq_var = cross.clone()
    for start in range(0, exact.shape[1], chunk):
        a = exact[:, start : start + chunk].double()
        b = approx[:, start : start + chunk].double()
        v = var[start : start + chunk].double()
        aa += a @ a.T
        bb += b @ b.T
        ab += a @ b.T
        cross += (v * a.square().sum(0)).sum()
        sq_var += v.square().sum()
    diff2 = float((aa.square().sum() + bb.square().sum() - 2 * ab.square().sum()).clamp_min(0))
    gram2 = float(aa.square().sum())
    cov2 = float(sq_var) + 2 * float(cross) / (k - 1) + gram2 / (k - 1) ** 2
    return math.sqrt(diff2 / gram2), math.sqrt(diff2) / (k - 1) / math.sqrt(cov2)


def bf16_rows(name: str, cfg: Config) -> list[Row]:
    """The bfloat16 deviation ring: collect time, memory, and the covariance error it brings."""
    iterates = make_iterates(name, ITERATES, cfg.device)
    base = iterates[0]
    size = sum(p.numel() for p in base.parameters())
    exact, half = Collector(base, 20), Collector(base, 20, deviation_dtype=torch.bfloat16)
    g = torch.Generator(cfg.device).manual_seed(3)
    walker = make_iterates(name, 1, cfg.device, seed=5)[0]
    with torch.no_grad():
        for _ in range(30):  # a random walk, so that the deviations are all different
            for p in walker.parameters():
                p.add_(torch.randn(p.shape, generator=g, device=cfg.device), alpha=1e-2)
            exact.collect(walker)
            half.collect(walker)
    # Both rings hold the same iterates in the same rows, and D̂ᵀD̂ ignores the row order.
    gram_err, cov_err = _gram_error(
        exact.deviations, half.deviations, exact.m2 / exact.n, exact.rank
    )
    ref = bandwidth_collect(size, cfg.device)
    rows: list[Row] = []
    for label, collector in (("float32 ring", exact), ("bfloat16 ring", half)):
        step = _cycle(collector.collect, iterates)
        t, t_ref = _versus(step, ref, cfg)
        held = peers.held_bytes(list(collector.buffers()))
        rows.append(
            _row(
                "lever",
                name,
                size,
                f"collect, {label}",
                t,
                K=20,
                ratio=ratio(t, t_ref),
                ratio_to="bandwidth",
                reference_seconds=t_ref.median,
                held_x4P=held / (4 * size),
            )
        )
    rows[-1].update(rel_frobenius_error_DtD=gram_err, rel_frobenius_error_cov=cov_err)
    return rows


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def growth_rows(name: str, cfg: Config) -> list[Row]:
    """Many collects on a small model: buffers keep their storage and no memory accumulates.

    Net allocation is the sum of all allocations minus frees over the last 1,000 collects, from
    the profiler's allocation records; the RSS change (Linux) is over the collects before those.
    """
    iterates = make_iterates(name, ITERATES, cfg.device)
    collector = Collector(iterates[0], 20)
    step: Callable[[], None] = _cycle(collector.collect, iterates)
    for _ in range(22):
        step()
    ptrs = [b.data_ptr() for b in collector.buffers()]
    rss0 = _rss_bytes()
    for _ in range(max(cfg.growth_collects - 1000, 0)):
        step()
    rss1 = _rss_bytes()  # before the profiled tail: the profiler's own records cost memory
    tail = min(cfg.growth_collects, 1000)

    def last() -> None:
        for _ in range(tail):
            step()

    counts = allocations(last, cfg.device)
    return [
        {
            "section": "growth",
            "model": name,
            "P": collector.layout.size,
            "collects": cfg.growth_collects,
            "data_ptr_constant": ptrs == [b.data_ptr() for b in collector.buffers()],
            "net_alloc_bytes_last_collects": None if counts is None else counts[1],
            "rss_delta_bytes": None if rss0 is None or rss1 is None else rss1 - rss0,
        }
    ]
