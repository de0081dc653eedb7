"""Runs SWAGCallback under real multi-process Lightning strategies on CPU (gloo).

``python tests/lightning_worker.py OUT`` starts two ranks that meet through a file store and
look to Lightning as if torchrun had launched them. They fit under ``ddp`` (statistics
replicated and sharded, a stop and a resume) and under ``ModelParallelStrategy`` with FSDP2
(``fully_shard`` on the data-parallel mesh; a stop and a resume). Rank 0 writes what it saw
to ``OUT``; ``tests/test_integrations_lightning.py`` checks it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file
from torch import Tensor

WORLD = 2


def run(rank: int, out: str) -> None:
    os.environ.update(
        TORCHELASTIC_RUN_ID="swag-test",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        GROUP_RANK="0",
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="1",  # unused: the process group exists before Lightning looks for it
    )
    store = (Path(out) / "rendezvous").resolve()
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from torch.distributed.fsdp import fully_shard

    from swag.integrations.lightning import SWAGCallback
    from tests.test_integrations_lightning import Net, Recorder, StopAfter, loader, trainer

    class Sharded(SWAGCallback):  # a second instance needs its own checkpoint key
        pass

    class FSDPNet(Net):
        def configure_model(self) -> None:
            fully_shard(self.body, mesh=self.device_mesh["data_parallel"])
            fully_shard(self, mesh=self.device_mesh["data_parallel"])

    res: dict[str, Tensor] = {}
    msgs: dict[str, str] = {}
    folder = Path(out)
    kw: dict[str, Any] = {"devices": WORLD, "strategy": "ddp", "enable_checkpointing": False}

    # ddp: replicated and sharded statistics of the same run, and the iterates themselves
    rec = Recorder()
    whole = SWAGCallback(max_rank=3, start=0.25, collect_every=1, bn_update=False)
    part = Sharded(max_rank=3, start=0.25, collect_every=1, bn_update=False, shard=True)
    trainer(folder / "ddp", 4, rec, whole, part, **kw).fit(Net(), loader())
    post = whole.posterior()
    full = part.posterior()  # one all_gather, on every rank
    res["thetas"] = torch.stack(rec.thetas)
    for name in ("mean", "std", "deviations"):
        res[f"whole_{name}"] = getattr(post, name)
        res[f"sharded_{name}"] = getattr(full, name)
    held = torch.tensor([float(part.collector.m2.numel())])
    sizes = [torch.zeros(1) for _ in range(WORLD)]
    dist.all_gather(sizes, held)
    res["held"] = torch.cat(sizes)

    # ddp, sharded: interrupted after 2 of 4 epochs, resumed from the checkpoint
    def sharded_fit(stop: list[pl.Callback], ckpt: str | None) -> SWAGCallback:
        cb = Sharded(max_rank=3, start=0.25, collect_every=1, bn_update=False, shard=True)
        save = pl.callbacks.ModelCheckpoint(dirpath=folder / "ddp_ckpt", save_last=True)
        kw_ckpt = {**kw, "enable_checkpointing": True}
        trainer(folder / "ddp_resume", 4, cb, save, *stop, **kw_ckpt).fit(
            Net(), loader(), ckpt_path=ckpt
        )
        return cb

    sharded_fit([StopAfter(2)], None)
    resumed = sharded_fit([], str(folder / "ddp_ckpt/last.ckpt")).posterior()
    for name in ("mean", "std", "deviations"):
        res[f"resumed_{name}"] = getattr(resumed, name)

    # FSDP2 through ModelParallelStrategy: statistics sharded like the parameters
    from lightning.pytorch.strategies import ModelParallelStrategy

    def mp_kw(checkpoints: bool = False) -> dict[str, Any]:  # a strategy serves one Trainer
        strategy = ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)
        return {"devices": WORLD, "strategy": strategy, "enable_checkpointing": checkpoints}

    fsdp_cb = SWAGCallback(max_rank=3, start=0.25, collect_every=1)
    trainer(folder / "fsdp2", 4, fsdp_cb, **mp_kw()).fit(FSDPNet(), loader())
    fpost = fsdp_cb.posterior()
    res["fsdp2_mean"] = fpost.mean
    res["fsdp2_n"] = torch.tensor([fpost.n])

    # FSDP2, interrupted and resumed: Lightning restores callbacks after setup here
    def fsdp_fit(stop: list[pl.Callback], ckpt: str | None) -> SWAGCallback:
        cb = SWAGCallback(max_rank=3, start=0.25, collect_every=1)
        save = pl.callbacks.ModelCheckpoint(dirpath=folder / "fsdp2_ckpt", save_last=True)
        trainer(folder / "fsdp2_resume", 4, cb, save, *stop, **mp_kw(True)).fit(
            FSDPNet(), loader(), ckpt_path=ckpt
        )
        return cb

    fsdp_fit([StopAfter(2)], None)
    fresumed = fsdp_fit([], str(folder / "fsdp2_ckpt/last.ckpt")).posterior()
    for name in ("mean", "std", "deviations"):
        res[f"fsdp2_{name}"] = getattr(fpost, name)
        res[f"fsdp2_resumed_{name}"] = getattr(fresumed, name)
    try:
        fsdp_cb.swa_model()
    except RuntimeError as exc:
        msgs["fsdp2_swa_model"] = str(exc)

    if rank == 0:
        save_file({k: v.contiguous() for k, v in res.items()}, str(folder / "results.safetensors"))
        (folder / "messages.json").write_text(json.dumps(msgs))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD)
