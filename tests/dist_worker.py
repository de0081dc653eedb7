"""Runs the distributed checks on W CPU processes (gloo); tests/test_distributed.py drives it.

``python tests/dist_worker.py WORLD OUT [CHECKPOINT]`` spawns WORLD ranks. Each collects the
same iterates (``iterates()``) replicated, sharded (DDP, ``shard=True``) and from an FSDP2
model, samples, writes DCP checkpoints under OUT, resumes CHECKPOINT (a collector saved at
another world size) and gathers a MultiSWAG. Rank 0 writes what it measured to
``OUT/results_w{WORLD}.safetensors``; the test compares it with float64 references.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file
from torch import Tensor, nn

import swag
from swag.core._params import local_part
from swag.core.distributed._shard import ShardPlan

K = 4
SEED = 7


def make_model() -> nn.Module:
    """A small MLP whose row counts (9, 5) split unevenly over 2 and 3 ranks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 5))


def iterates(count: int, size: int) -> list[Tensor]:
    """``count`` deterministic flat iterates ``(P,)`` in float32, the same on every rank."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(size, generator=g)
    return [base + 0.01 * t + 0.05 * torch.randn(size, generator=g) for t in range(count)]


def _set_fsdp(model: nn.Module, theta: Tensor, plan: ShardPlan) -> None:
    """Write the global ``theta`` ``(P,)`` into an FSDP2 model's local shards."""
    layout = plan.layout
    params = layout.resolve(model)
    with torch.no_grad():
        for p, full, (lo, hi) in zip(params, layout.split(theta), plan.rows, strict=True):
            local_part(p).copy_(full[lo:hi])


def run(rank: int, world: int, out: str, checkpoint: str) -> None:
    # rendezvous through a file, not a TCP port that another process could take meanwhile
    store = Path(out).resolve() / f"rendezvous_w{world}"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from swag import distributed as sd

    res: dict[str, Tensor] = {}
    folder = Path(out)

    # DDP: replicated (the default) and sharded statistics from the same iterates
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    whole = swag.Collector(ddp, max_rank=K)
    sharded = swag.Collector(ddp, max_rank=K, shard=True)
    layout = whole.layout
    thetas = iterates(6, layout.size)
    for theta in thetas:
        layout.scatter(theta, model)
        whole.collect()
        sharded.collect()
    post = whole.posterior()
    part = sharded.sharded_posterior()
    res["bytes_whole"] = torch.tensor(_held(whole))
    sizes = torch.tensor([_held(sharded)])
    gathered = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(gathered, sizes)
    res["bytes_per_rank"] = torch.cat(gathered)
    assembled = part.full()
    for name in ("mean", "std", "deviations"):
        res[f"ddp_{name}"] = getattr(post, name)
        res[f"ddp_shard_{name}"] = getattr(assembled, name)
    variants = {"full": {}, "diag": {"diagonal": True}, "block": {"blockwise": True}}
    for kw_name, kw in variants.items():
        ref = post.sample((3,), generator=torch.Generator().manual_seed(SEED), **kw)
        got = part.sample((3,), generator=torch.Generator().manual_seed(SEED), **kw)
        res[f"ddp_sample_{kw_name}_ref"], res[f"ddp_sample_{kw_name}"] = ref, got
    # predict on one rank's part at W > 1: whole (P,) samples go into the whole model
    xs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(1))]
    ys = torch.tensor([0, 1, 2, 3])
    bn_model = nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9, affine=False), nn.Linear(9, 5))
    drop_model = nn.Sequential(nn.Linear(6, 9), nn.Dropout(0.3), nn.Linear(9, 5))
    for name, p in (("ref", post), ("sharded", part)):

        def gen() -> torch.Generator:
            return torch.Generator().manual_seed(SEED)

        res[f"ddp_predict_{name}"] = swag.predict(
            p, make_model(), xs, num_samples=3, generator=gen()
        )
        res[f"ddp_predict_bn_{name}"] = swag.predict(
            p,
            bn_model,
            xs,
            num_samples=3,
            generator=gen(),
            options=swag.PredictOptions(bn=swag.BNRefresh(xs)),
        )
        res[f"ddp_predict_dropout_{name}"] = swag.predict(
            p,
            drop_model,
            xs,
            num_samples=3,
            generator=gen(),
            options=swag.PredictOptions(mc_dropout=True),
        )
        with warnings.catch_warnings():  # 4 examples: the optimum may sit at a bound
            warnings.simplefilter("ignore", RuntimeWarning)
            fitted = swag.fit_scale(p, make_model(), [(xs[0], ys)], num_samples=2, tol=0.5,
                                    generator=gen())  # fmt: skip
        res[f"ddp_fit_scale_{name}"] = torch.tensor(fitted)
    copy = make_model()
    part.apply_(copy)
    res["ddp_applied"] = torch.cat([p.detach().reshape(-1) for p in copy.parameters()])
    try:  # a shard's state into an unsharded collector: refused, naming the shard
        swag.Collector(make_model(), max_rank=K).load_state_dict(sharded.state_dict())
        res["wrong_shard_refused"] = torch.tensor(0)
    except RuntimeError as e:
        res["wrong_shard_refused"] = torch.tensor(int("rank/world" in str(e)))

    # FSDP2: statistics from each rank's local shards, no communication
    fmodel = make_model()
    fully_shard(fmodel, mesh=init_device_mesh("cpu", (world,)))
    plan = sharded.plan
    for theta in thetas:
        _set_fsdp(fmodel, theta, plan)
        if theta is thetas[0]:
            fcol = swag.Collector(fmodel, max_rank=K)
        fcol.collect()
    fpart = fcol.sharded_posterior()
    ref = post.sample((3,), generator=torch.Generator().manual_seed(SEED))
    local = fpart.sample_local((3,), generator=torch.Generator().manual_seed(SEED))
    res["fsdp_local_diff"] = (local - fpart.plan.take(ref)).abs().max().reshape(1)
    res["fsdp_sample"] = fpart.assemble(local)
    res["fsdp_sample_ref"] = ref
    res["fsdp_mean"] = fpart.full().mean
    fpart.apply_(fmodel, local[0])

    # checkpoints: save at this world size; resume one saved at another
    sd.save(sharded, folder / f"collector_w{world}")
    sd.save(part, folder / f"posterior_w{world}")
    if checkpoint:
        resumed = sd.load_collector(checkpoint, ddp, shard=True)
        extra = iterates(8, layout.size)[6:]
        for theta in extra:
            layout.scatter(theta, model)
            resumed.collect()
        again = resumed.sharded_posterior().full()
        for name in ("mean", "std", "deviations"):
            res[f"resumed_{name}"] = getattr(again, name)

    # A NaN in rows only the last rank holds (row 4 of the (5, 9) weight): every rank refuses
    nan_collector = swag.Collector(ddp, max_rank=K, shard=True)
    for theta in thetas[:2]:
        layout.scatter(theta, model)
        nan_collector.collect()
    with torch.no_grad():
        model[2].weight[4, 0] = float("nan")
    try:
        nan_collector.collect()
        raised = 0
    except ValueError:
        raised = 1
    flags = torch.tensor([raised, nan_collector.n])
    every = [torch.empty_like(flags) for _ in range(world)]
    dist.all_gather(every, flags)
    res["nan_raised_and_n"] = torch.stack(every)

    # MultiSWAG: one member per rank, gathered on every rank
    member = swag.SWAGPosterior(
        post.mean + rank, post.std * (rank + 1), post.deviations, layout, post.n
    )
    mix = sd.gather_multiswag(member)
    for m, c in enumerate(mix.components):
        res[f"member{m}_mean"] = c.mean
        res[f"member{m}_std"] = c.std

    if rank == 0:
        results = {k: v.contiguous() for k, v in res.items()}
        save_file(results, str(folder / f"results_w{world}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def _held(collector: nn.Module) -> int:
    """Bytes of persistent statistics a collector holds (its buffers, not the scratch)."""
    state = collector.state_dict().values()
    return sum(b.numel() * b.element_size() for b in state if isinstance(b, Tensor))


if __name__ == "__main__":
    world, out = int(sys.argv[1]), sys.argv[2]
    checkpoint = sys.argv[3] if len(sys.argv) > 3 else ""
    mp.spawn(run, args=(world, out, checkpoint), nprocs=world)
