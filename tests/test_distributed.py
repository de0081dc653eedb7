"""Sharded SWAG on CPU with gloo at world sizes 2 and 3, against float64 references.

One module fixture runs ``tests/dist_worker.py`` at W = 2, then at W = 3 (which also resumes the
W = 2 checkpoint); each test checks one thing it measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

import swag
from swag import distributed as sd
from tests.dist_worker import SEED, K, iterates, make_model

ROOT = Path(__file__).parents[1]
WORLDS = (2, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, Tensor]]]:
    out = tmp_path_factory.mktemp("dist")
    results = {}
    for world in WORLDS:
        resume = [str(out / "collector_w2")] if world == 3 else []
        cmd = [sys.executable, str(ROOT / "tests" / "dist_worker.py"), str(world), str(out)]
        done = subprocess.run(cmd + resume, cwd=ROOT, timeout=120, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
        results[world] = load_file(str(out / f"results_w{world}.safetensors"))
    return out, results


def reference(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, σ and the last K deviations of the first ``count`` iterates, in float64."""
    size = swag.ParamLayout.from_model(make_model()).size
    x = torch.stack(iterates(count, size)).double().numpy()
    mean = x.mean(0)
    running = np.cumsum(x, 0) / np.arange(1, count + 1)[:, None]
    return mean, x.std(0), (x - running)[-K:]


@pytest.mark.parametrize("world", WORLDS)
def test_replicated_and_sharded_statistics_match_float64(runs, world: int) -> None:
    mean, std, dev = reference(6)
    r = runs[1][world]
    for prefix in ("ddp_", "ddp_shard_"):
        np.testing.assert_allclose(r[prefix + "mean"].double(), mean, atol=1e-6)
        np.testing.assert_allclose(r[prefix + "std"].double(), std, atol=1e-6)
        np.testing.assert_allclose(r[prefix + "deviations"].double(), dev, atol=1e-6)
    for name in ("mean", "std", "deviations"):  # sharding changes no bit
        assert torch.equal(r[f"ddp_{name}"], r[f"ddp_shard_{name}"])
    assert torch.equal(r["ddp_applied"], r["ddp_mean"])


@pytest.mark.parametrize("world", WORLDS)
def test_sharded_samples_equal_unsharded_samples(runs, world: int) -> None:
    r = runs[1][world]
    # the same noise: equal up to the rounding of the K-term product D̂ᵀz₂ (a BLAS kernel may
    # sum it in another order for a shard's columns); misaligned noise would be off by O(σ)
    exact = {"atol": 1e-5, "rtol": 0}
    for variant in ("full", "diag", "block"):
        ref = r[f"ddp_sample_{variant}_ref"]
        torch.testing.assert_close(r[f"ddp_sample_{variant}"], ref, **exact, msg=variant)
    # predict on a ShardedPosterior at W > 1 (its samples are whole (P,) vectors)
    for what in ("predict", "predict_bn", "predict_dropout"):
        torch.testing.assert_close(r[f"ddp_{what}_sharded"], r[f"ddp_{what}_ref"], **exact)
    # fit_scale: the same golden-section path, up to the samples' ≤ 1e-5 rounding
    torch.testing.assert_close(
        r["ddp_fit_scale_sharded"], r["ddp_fit_scale_ref"], rtol=1e-3, atol=0
    )
    assert r["fsdp_local_diff"].item() <= 1e-5
    torch.testing.assert_close(r["fsdp_sample"], r["fsdp_sample_ref"], **exact)
    assert torch.equal(r["fsdp_mean"], r["ddp_mean"])


@pytest.mark.parametrize("world", WORLDS)
def test_sharded_memory_is_a_1_over_w_slice(runs, world: int) -> None:
    r = runs[1][world]
    per_rank = r["bytes_per_rank"]
    assert int(per_rank.sum()) == int(r["bytes_whole"]) == 4 * (K + 3) * 113
    assert int(per_rank.max()) <= 4 * (K + 3) * (6 * 5 + 5 + 9 * 3 + 3)  # ceil(rows / W)
    assert r["wrong_shard_refused"].item() == 1


def test_checkpoints_load_in_one_process(runs) -> None:
    out, _ = runs
    mean, _, dev = reference(6)
    for world in WORLDS:
        collector = sd.load_collector(out / f"collector_w{world}", make_model())
        post = collector.posterior()
        np.testing.assert_allclose(post.mean.double(), mean, atol=1e-6)
        np.testing.assert_allclose(post.deviations.double(), dev, atol=1e-6)
        loaded = sd.load_posterior(out / f"posterior_w{world}")
        assert isinstance(loaded, swag.SWAGPosterior)
        assert torch.equal(loaded.mean, post.mean) and torch.equal(loaded.std, post.std)
        assert torch.equal(loaded.deviations, post.deviations)


def test_resume_at_another_world_size_is_bit_identical(runs) -> None:
    r = runs[1][3]  # saved at W = 2 after 6 iterates, resumed at W = 3 for 2 more
    model = make_model()
    collector = swag.Collector(model, max_rank=K)
    for theta in iterates(8, collector.layout.size):
        collector.layout.scatter(theta, model)
        collector.collect()
    post = collector.posterior()
    for name in ("mean", "std", "deviations"):
        assert torch.equal(r[f"resumed_{name}"], getattr(post, name)), name


@pytest.mark.parametrize("world", WORLDS)
def test_gather_multiswag_holds_every_rank_in_order(runs, world: int) -> None:
    r = runs[1][world]
    for m in range(world):
        assert torch.equal(r[f"member{m}_mean"], r["ddp_mean"] + m)
        assert torch.equal(r[f"member{m}_std"], r["ddp_std"] * (m + 1))


@pytest.mark.parametrize("world", WORLDS)
def test_nan_in_one_rank_shard_stops_every_rank(runs, world: int) -> None:
    raised_and_n = runs[1][world]["nan_raised_and_n"]
    assert raised_and_n.tolist() == [[1, 2]] * world  # all raised, all still at n = 2


def test_shard_without_process_group_names_the_fix() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        swag.Collector(make_model(), max_rank=2, shard=True)


def test_sharded_checkpoint_folder_is_validated(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"swag\.json"):
        sd.load_posterior(tmp_path)
    post = swag.Collector(make_model(), max_rank=2)
    post.collect()
    sd.save(post.posterior(), tmp_path / "p")
    with pytest.raises(ValueError, match="not a 'collector'"):
        sd.load_collector(tmp_path / "p", make_model())
    sample = sd.load_posterior(tmp_path / "p").sample(generator=torch.Generator().manual_seed(SEED))
    assert sample.shape == (113,)


@pytest.mark.slow
def test_multiswag_torchrun_example_runs() -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    script = ROOT / "experiments" / "multiswag_torchrun.py"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), "--epochs", "4"]
    done = subprocess.run(cmd, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "MultiSWAG of 2" in done.stdout


def _edit_json(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "swag.json").read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    (folder / "swag.json").write_text(json.dumps(meta))


def test_checkpoint_tensors_and_json_must_come_from_one_save(tmp_path: Path) -> None:
    model = make_model()
    collector = swag.Collector(model, max_rank=2)
    for _ in range(3):
        collector.collect()
    folder = tmp_path / "c"
    sd.save(collector, folder)
    assert sd.load_collector(folder, make_model()).n == 3
    original = (folder / "swag.json").read_text()
    _edit_json(folder, n=5)  # an interrupted overwrite: new swag.json, old tensors
    with pytest.raises(ValueError, match=r"saved after 3 collects but swag\.json says 5"):
        sd.load_collector(folder, make_model())
    cases = [
        ({"n": None}, "lacks the metadata field 'n'"),
        ({"dtype": "Tensor"}, "dtype 'Tensor' is not a floating torch dtype"),
        ({"max_rank": 3}, r"do not fit swag\.json"),
    ]
    for changes, message in cases:
        (folder / "swag.json").write_text(original)
        _edit_json(folder, **changes)
        with pytest.raises(ValueError, match=message):
            sd.load_collector(folder, make_model())
