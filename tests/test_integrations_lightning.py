"""SWAGCallback under a real lightning.Trainer on CPU: statistics, resume, BN, strategies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import swag
from swag.integrations import ResumableSampler
from swag.integrations.lightning import SWAGCallback, check_strategy

pytestmark = [
    # Lightning 2.6 calls torch's deprecated pytree LeafSpec (its bug, harmless here).
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning"),
    # Lightning's advice for real jobs, irrelevant to a tiny CPU fit: worker processes for the
    # loader, and a log interval longer than the epoch.
    pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]


# Net's StepLR moves the rate in the SWA phase of the tests that keep it (swa_lr=None): the
# callback warns; those tests check the statistics, not the advice.
KEEPS_SCHEDULE = pytest.mark.filterwarnings("ignore:the learning rate changed during the SWA")


class Net(pl.LightningModule):
    """A small classifier with BatchNorm; weights from a seeded generator (no global seed)."""

    def __init__(self, seed: int = 0, lr: float = 0.05) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)}


def loader() -> DataLoader[tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def trainer(tmp_path: Path, epochs: int, *callbacks: pl.Callback, **kw: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(
        max_epochs=epochs,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        **(settings | kw),
    )


class Recorder(pl.Callback):
    """Copies the covered parameters after every optimiser step: the float64 oracle's input."""

    def __init__(self) -> None:
        self.thetas: list[Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *a: Any) -> None:
        flat = [p.detach().double().reshape(-1) for p in module.parameters()]
        self.thetas.append(torch.cat(flat))


class StopAfter(pl.Callback):
    """Stops fit after ``epochs`` epochs, as a preempted job would (max_epochs unchanged)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


@KEEPS_SCHEDULE
@pytest.mark.parametrize("every", [1, 3])
def test_step_collection_matches_float64_over_the_phase(tmp_path: Path, every: int) -> None:
    rec = Recorder()
    cb = SWAGCallback(max_rank=4, start=0.25, collect_every=every, bn_update=False)
    trainer(tmp_path, 4, rec, cb, enable_checkpointing=False).fit(Net(), loader())
    # 4 batches x 4 epochs = 16 steps; the phase begins at step int(0.25 * 16) = 4
    x = torch.stack(rec.thetas[4:][every - 1 :: every]).numpy()
    post = cb.posterior()
    assert post.n == cb.collected == len(x) == 12 // every
    running = np.cumsum(x, 0) / np.arange(1, len(x) + 1)[:, None]
    # float32 statistics of O(1) weights: agreement to ~1e-6 (a few ulps of the inputs)
    np.testing.assert_allclose(post.mean.double().numpy(), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(post.std.double().numpy(), x.std(0), atol=1e-6)
    np.testing.assert_allclose(post.deviations.double().numpy(), (x - running)[-4:], atol=1e-6)


def fit_swag(
    tmp_path: Path,
    stop: int | None,
    every: int | str,
    ckpt: str | None = None,
    k: int = 3,
    cb: SWAGCallback | None = None,
) -> Any:
    cb = cb or SWAGCallback(k, start=0.3, collect_every=every, swa_lr=0.02, anneal_steps=3)
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    net = Net()
    fitter = trainer(tmp_path, 6, cb, save, *([StopAfter(stop)] if stop else []))
    fitter.fit(net, loader(), ckpt_path=ckpt)
    return cb, net, fitter


# resuming writes into the directory that holds the checkpoint, as a user would
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("every", ["epoch", 3])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path: Path, every: int | str) -> None:
    whole, net, fitter = fit_swag(tmp_path / "a", None, every)
    first, _, stopped = fit_swag(tmp_path / "b", 3, every)
    assert stopped.current_epoch == 3  # stopped inside the SWA phase, after SWALR took over
    ckpt = str(tmp_path / "b/ckpt/last.ckpt")
    # per step, the stopped run's callback object itself resumes (its old state is replaced)
    reuse = first if every == 3 else None
    resumed, net_b, fitter_b = fit_swag(tmp_path / "b", None, every, ckpt, cb=reuse)
    a, b = whole.posterior(), resumed.posterior()
    assert a.n == b.n == 5  # epochs 1-5; or steps 8-24 (from int(0.3 · 24)), every 3rd
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for p, q in zip(net.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(p, q)
    # SWALR was restored, not restarted: same rate; the user's StepLR came back untouched
    lr = [fitter.optimizers[0].param_groups[0]["lr"], fitter_b.optimizers[0].param_groups[0]["lr"]]
    assert lr[0] == lr[1] == 0.02


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_checkpoint_from_another_configuration_is_refused(tmp_path: Path) -> None:
    fit_swag(tmp_path, 3, "epoch")
    with pytest.raises(ValueError, match="max_rank is 3 in the checkpoint but 5 here"):
        fit_swag(tmp_path, None, "epoch", str(tmp_path / "ckpt/last.ckpt"), k=5)
    # a damaged checkpoint (one statistic changed): refused by its checksum, not loaded
    ckpt = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "SWAGCallback" in k]
    state["collector"]["tensors"]["m2"][0] += 1e-3
    torch.save(ckpt, tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError, match="checksum does not match its contents"):
        fit_swag(tmp_path, None, "epoch", str(tmp_path / "damaged.ckpt"))


@KEEPS_SCHEDULE
def test_bn_refresh_of_the_swa_model_matches_torch_update_bn(tmp_path: Path) -> None:
    cb = SWAGCallback(max_rank=2, start=1, params=["body.0", "head"], bn_update=True)
    net = Net()
    trainer(tmp_path, 4, cb, enable_checkpointing=False).fit(net, loader())
    swa = cb.swa_model()
    assert swa is not net and cb.collected == 3
    post = cb.posterior()  # the BatchNorm's own affine weights are not covered
    assert post.layout.names == ("body.0.weight", "body.0.bias", "head.weight", "head.bias")
    assert torch.equal(swa.body[1].weight, net.body[1].weight)
    # the oracle: torch's own update_bn on a copy holding the SWA mean
    ref = post.to_model(net)
    torch.optim.swa_utils.update_bn(loader(), ref)
    for (name, a), b in zip(swa.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)  # same sums, same order
    assert not torch.equal(swa.body[1].running_mean, net.body[1].running_mean)
    # swag.predict averages the LightningModule's predictions unchanged; at scale 0 every draw is
    # the SWA mean, so the average is the BN-refreshed SWA model's softmax
    x = loader().dataset.tensors[0]  # type: ignore[attr-defined]
    probs = swag.predict(
        post,
        net,
        [x],
        num_samples=2,
        scale=0.0,
        options=swag.PredictOptions(bn=swag.BNRefresh(loader())),
    )
    torch.testing.assert_close(probs, torch.softmax(swa.eval()(x), -1), rtol=1e-5, atol=1e-6)


def test_results_before_fit_name_the_fix() -> None:
    # bad arguments: see the misuse table in test_guarantee_misuse_integrations.py
    with pytest.raises(RuntimeError, match="call fit"):
        SWAGCallback().posterior()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], dict[str, str]]:
    out = tmp_path_factory.mktemp("lightning_ddp")
    root = Path(__file__).parents[1]
    cmd = [sys.executable, str(root / "tests" / "lightning_worker.py"), str(out)]
    done = subprocess.run(cmd, cwd=root, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    messages = json.loads((out / "messages.json").read_text())
    return load_file(str(out / "results.safetensors")), messages


def test_ddp_statistics_replicated_and_sharded_match_float64(ranks: Any) -> None:
    r, _ = ranks
    x = r["thetas"][2:].numpy()  # 2 ranks x 2 batches x 4 epochs = 8 steps; phase from step 2
    running = np.cumsum(x, 0) / np.arange(1, len(x) + 1)[:, None]
    np.testing.assert_allclose(r["whole_mean"].double(), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(r["whole_std"].double(), x.std(0), atol=1e-6)
    np.testing.assert_allclose(r["whole_deviations"].double(), (x - running)[-3:], atol=1e-6)
    for name in ("mean", "std", "deviations"):  # sharding changes no bit, nor does a resume
        assert torch.equal(r[f"sharded_{name}"], r[f"whole_{name}"]), name
        assert torch.equal(r[f"resumed_{name}"], r[f"whole_{name}"]), name
    # each rank held its rows only: 16 + 8 rows of 5 inputs etc., together P = 179
    assert r["held"].tolist() == [98.0, 81.0]


def test_fsdp2_through_model_parallel_strategy(ranks: Any) -> None:
    r, msgs = ranks
    assert r["fsdp2_n"].item() == 6
    # the same trajectory as ddp (two-rank gradient averages round alike): the same SWA mean
    torch.testing.assert_close(r["fsdp2_mean"], r["whole_mean"], rtol=0, atol=1e-6)
    assert "sharded_posterior().apply_(model)" in msgs["fsdp2_swa_model"]
    for name in ("mean", "std", "deviations"):  # restored after setup, still bit-identical
        assert torch.equal(r[f"fsdp2_resumed_{name}"], r[f"fsdp2_{name}"]), name


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (lambda: FSDPStrategy(), "FSDP1 flattens the parameters; use ModelParallelStrategy"),
        (lambda: DDPStrategy(start_method="spawn"), "Use strategy='ddp'"),
        (lambda: DDPStrategy(start_method="fork"), "launched by fork"),
    ],
)
def test_unsupported_strategies_are_refused_with_the_fix(strategy: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_strategy(strategy())
    for ok in (DDPStrategy(), ModelParallelStrategy(), SingleDeviceStrategy("cpu")):
        check_strategy(ok)


class DictNet(Net):
    """Trains on dict batches ``{"x": ..., "y": ...}``."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:  # type: ignore[override]
        return nn.functional.cross_entropy(self(batch["x"]), batch["y"])


def test_dict_batches_and_gradient_accumulation(tmp_path: Path) -> None:
    x, y = loader().dataset.tensors  # type: ignore[attr-defined]
    batches = DataLoader([{"x": a, "y": b} for a, b in zip(x, y, strict=True)], batch_size=16)
    cb = SWAGCallback(max_rank=2, start=1, collect_every=1, input_fn=lambda b: b["x"])
    net = DictNet()
    fit = trainer(tmp_path, 2, cb, enable_checkpointing=False, accumulate_grad_batches=2)
    fit.fit(net, batches)
    # 4 batches per epoch make 2 optimiser steps; the phase (epoch 1) collects at those 2 only
    assert fit.global_step == 4 and cb.collected == 2
    ref = cb.posterior().to_model(net)
    torch.optim.swa_utils.update_bn([b["x"] for b in batches], ref)
    for a, b in zip(cb.swa_model().state_dict().values(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class TwoOptimizers(Net):
    """Manual optimisation, two optimisers (body, head), each stepped once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:  # type: ignore[override]
        x, y = batch
        for opt in self.optimizers():  # type: ignore[union-attr]
            opt.zero_grad()
            self.manual_backward(nn.functional.cross_entropy(self(x), y))
            opt.step()

    def configure_optimizers(self) -> Any:
        body = torch.optim.SGD(self.body.parameters(), lr=self.lr)
        return [body, torch.optim.SGD(self.head.parameters(), lr=self.lr)]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_manual_optimisation_counts_steps_of_the_first_optimiser(tmp_path: Path) -> None:
    rec = Recorder()
    cb = SWAGCallback(max_rank=2, start=0.25, collect_every=2, bn_update=False)
    fit = trainer(tmp_path, 4, rec, cb, enable_checkpointing=False)
    fit.fit(TwoOptimizers(), loader())
    assert fit.global_step == 32  # Lightning counts both optimisers' steps
    # one unit: 16 batches = 16 steps of the first optimiser; the phase begins after step
    # int(0.25 * 16) = 4 and collects after steps 6, 8, ..., 16
    x = torch.stack(rec.thetas[4:][1::2]).numpy()
    post = cb.posterior()
    assert post.n == len(x) == 6
    np.testing.assert_allclose(post.mean.double().numpy(), x.mean(0), atol=1e-6)
    # stopped and resumed: the first optimiser's count rides in the checkpoint
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = SWAGCallback(max_rank=2, start=0.25, collect_every=2, bn_update=False)
    trainer(tmp_path, 4, first, save, StopAfter(2)).fit(TwoOptimizers(), loader())
    again = SWAGCallback(max_rank=2, start=0.25, collect_every=2, bn_update=False)
    save = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 4, again, save).fit(
        TwoOptimizers(), loader(), ckpt_path=str(tmp_path / "ckpt/last.ckpt")
    )
    resumed = again.posterior()
    assert resumed.n == 6
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(post, name), getattr(resumed, name)), name


def test_swa_lr_none_warns_once_when_the_users_schedule_moves_the_rate(tmp_path: Path) -> None:
    cb = SWAGCallback(max_rank=2, start=0, bn_update=False)  # Net's StepLR halves every 2 epochs
    with pytest.warns(UserWarning, match="learning rate changed during the SWA phase") as seen:
        trainer(tmp_path, 4, cb, enable_checkpointing=False).fit(Net(), loader())
    assert sum("SWA phase" in str(w.message) for w in seen) == 1 and cb.collected == 4
    # a constant rate (swa_lr=) warns nothing (pytest turns any warning into an error)
    cb = SWAGCallback(max_rank=2, start=0, bn_update=False, swa_lr=0.05)
    trainer(tmp_path, 4, cb, enable_checkpointing=False).fit(Net(), loader())
    assert cb.collected == 4


class KeywordsAnywhere(DictNet):
    """Its forward accepts any keywords by signature, then refuses the labels when called."""

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:  # type: ignore[override]
        if set(kwargs) - {"x"}:
            raise TypeError(f"forward() got an unexpected keyword argument {sorted(kwargs)[-1]!r}")
        return super().forward(*args, *kwargs.values())


def test_unusable_bn_refresh_input_is_refused_at_the_first_batch(tmp_path: Path) -> None:
    x, y = loader().dataset.tensors  # type: ignore[attr-defined]
    batches = DataLoader([{"x": a, "y": b} for a, b in zip(x, y, strict=True)], batch_size=16)
    rec = Recorder()
    fit = trainer(tmp_path, 2, rec, SWAGCallback(max_rank=2, start=1), enable_checkpointing=False)
    with pytest.raises(TypeError, match=r"model\(\*\*batch\).*'y'.*input_fn=lambda batch"):
        fit.fit(DictNet(), batches)
    assert rec.thetas == []  # refused before the first optimiser step, not after training
    # a forward whose signature cannot tell: the refresh's own error gets the same hint
    fit = trainer(tmp_path, 2, rec, SWAGCallback(max_rank=2, start=1), enable_checkpointing=False)
    with pytest.raises(TypeError, match="argument 'y'; pass SWAGCallback\\(input_fn="):
        fit.fit(KeywordsAnywhere(), batches)
    assert len(rec.thetas) == 8


class Wrapper(pl.LightningModule):
    """Keeps the network as ``self.net``, so its parameters are named ``net.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = bare_net()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def bare_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def test_a_wrapped_posterior_maps_onto_the_bare_network(tmp_path: Path) -> None:
    cb = SWAGCallback(max_rank=2, start=0, collect_every=1)
    trainer(tmp_path, 1, cb, enable_checkpointing=False).fit(Wrapper(), loader())
    post, bare = cb.posterior(), bare_net()
    assert post.layout.names[0] == "net.0.weight"
    with pytest.raises(ValueError, match=r"prefix 'net\.'.*posterior\(strip_prefix='net\.'\)"):
        post.to_model(bare)
    stripped = cb.posterior(strip_prefix="net.")
    swa = stripped.to_model(bare)
    assert stripped.layout.names == tuple(n for n, _ in bare.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in swa.parameters()])
    assert torch.equal(flat, post.mean)  # the same numbers, under the bare names
    # the other way round: a bare posterior applied to the wrapper names the submodule
    with pytest.raises(ValueError, match="the model's submodule 'net'"):
        stripped.to_model(Wrapper())
    with pytest.raises(ValueError, match=r"prefix 'body\.' does not begin"):
        cb.posterior(strip_prefix="body.")


def shuffled(resumable: bool) -> DataLoader[tuple[Tensor, ...]]:
    data = loader().dataset
    if resumable:
        return DataLoader(data, batch_size=16, sampler=ResumableSampler(data, seed=3))  # type: ignore[arg-type]
    return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_shuffled_loader_resumes_exactly_with_the_resumable_sampler(tmp_path: Path) -> None:
    def run(stop: int | None, ckpt: str | None, resumable: bool = True) -> SWAGCallback:
        cb = SWAGCallback(max_rank=2, start=1, bn_update=False, swa_lr=0.02)
        folder = tmp_path / ("whole" if stop is None and ckpt is None else "stopped")
        save = pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True)
        stops = [StopAfter(stop)] if stop else []
        fit = trainer(folder, 4, cb, save, *stops)
        fit.fit(Net(), shuffled(resumable), ckpt_path=ckpt)
        assert fit.current_epoch == (stop or 4)
        return cb

    whole = run(None, None).posterior()
    run(2, None)
    ckpt = str(tmp_path / "stopped.ckpt")  # a resumed run overwrites last.ckpt
    shutil.copy(tmp_path / "stopped/last.ckpt", ckpt)
    resumed = run(None, ckpt).posterior()  # no warning: the order resumes
    assert resumed.n == 3
    for name in ("mean", "std", "deviations"):
        assert torch.equal(getattr(whole, name), getattr(resumed, name)), name
    with pytest.warns(UserWarning, match="ResumableSampler"):
        other = run(None, ckpt, resumable=False).posterior()
    assert not torch.equal(other.mean, whole.mean)  # what the warning is about
    # the order depends on (seed, epoch) only; each epoch is a permutation
    sampler = ResumableSampler(range(10), seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(10))
    with pytest.raises(TypeError, match="seed"):
        ResumableSampler(range(3), seed=1.5)  # type: ignore[arg-type]
