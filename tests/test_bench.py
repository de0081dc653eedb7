"""`swag bench`: the smoke preset end to end, and a run that fails early and is never half written.

Runs of the smoke preset are shared: the first call of ``run_seed`` per test session really
trains (about 20 s on an idle machine), later tests reuse its result through ``cached_runs``.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

import swag
import swag.bench._evaluate as evaluate
import swag.bench._outdir as outdir
import swag.bench._report as report
import swag.bench._runner as runner
import swag.bench._train as train_mod
from swag.bench._config import PRESETS, BenchConfig
from swag.bench._evaluate import BASELINES, FGE_SAM, METHODS, Predictions, missing_baselines
from swag.bench._progress import Progress
from swag.bench._train import plan
from swag.cli import _parser, main

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(
    not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist"
)
SMOKE = ["bench", "--preset", "smoke", "--no-progress"]
# every row whose package is installed (the Laplace and IVON rows need the extra `baselines`)
ROWS = [m for m in METHODS if m not in missing_baselines(METHODS)]
# fewer figures to write where they are not the point
FEW = [*SMOKE, "--skip", *(m for m in ROWS if m not in ("SGD", "SWA", "SWAG"))]
_CACHE: dict[str, Any] = {}
_real_run_seed = runner.run_seed


def _cached_run_seed(cfg: BenchConfig, seed: int, **kw: Any) -> Any:
    if "run" not in _CACHE:
        _CACHE["run"] = _real_run_seed(cfg, seed, **{**kw, "methods": ROWS})
    summary, predictions, data = _CACHE["run"]
    summary = json.loads(json.dumps(summary))  # a copy, NaN kept
    summary["settings"]["seed"] = seed
    summary["results"] = {m: summary["results"][m] for m in kw["methods"]}
    probs = {m: predictions.probs[m] for m in kw["methods"]}
    return summary, Predictions(probs, predictions.seconds, predictions.fitted), data


@pytest.fixture
def cached_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_seed", _cached_run_seed)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training or data loading fails the test: the error must come before both."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the bench started working before checking its arguments")

    monkeypatch.setattr(runner, "load_data", fail)
    monkeypatch.setattr(runner, "train", fail)


def test_runs_follow_the_papers_schedules() -> None:
    cfg = PRESETS["smoke"]  # 2 epochs, the last one collecting; 4 collects per epoch; 2 cycles
    spe, total = 10, 20
    sgd, never = plan(cfg, "sgd", spe)
    assert never is None and plan(cfg, "sam", spe)[1] is None
    # the SWAG paper's SGD rate: lr to 50% of the run, linear to lr/100 by 90%, then lr/100
    for k in range(total):
        t = k / total
        want = 1.0 if t <= 0.5 else 0.01 if t >= 0.9 else 1 + (0.01 - 1) * (t - 0.5) / 0.4
        assert math.isclose(sgd(k), want, rel_tol=1e-12), k
    swag_rate, when = plan(cfg, "swag", spe)
    assert swag_rate(total - 1) == cfg.swa_lr / cfg.lr
    assert when is not None and [k for k in range(1, total + 1) if when(k)] == [12, 14, 16, 18, 20]
    # FGE: lr for the first epoch, then 2 linear cycles of 5 steps from lr to lr/100
    fge, at = plan(cfg, "fge", spe)
    assert [fge(k) for k in range(10)] == [1.0] * 10
    for k in range(10, total):
        t = ((k - 10) % 5 + 1) / 5
        assert math.isclose(fge(k), (1 - t) + t * 0.01, rel_tol=1e-12), k
    assert at is not None and [k for k in range(1, total + 1) if at(k)] == [15, 20]


def _counting_cnn(calls: list[int]) -> Any:
    real = train_mod.small_cnn

    def make(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        return model

    return make


@pytest.mark.slow
def test_fge_members_are_exactly_the_weights_at_cycle_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = PRESETS["smoke"].replace(batch_size=8)  # 80 images: 10 steps per epoch, as above
    x, y = torch.randn(80, 1, 28, 28), torch.randint(0, 10, (80,))
    seen: list[tuple[int, torch.Tensor]] = []
    real_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, closure: Any = None) -> Any:
        loss = real_step(self, closure)
        params = [p for g in self.param_groups for p in g["params"]]
        seen.append((len(seen) + 1, torch.cat([p.detach().reshape(-1) for p in params])))
        return loss

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run = train_mod.train(
        cfg, x, y, kind="fge", seed=0, device=torch.device("cpu"), desc="fge",
        progress=Progress(enabled=False),
    )  # fmt: skip
    assert run.snapshots is not None and run.collected_at == [15, 20]
    members = run.snapshots.posterior()
    assert len(members) == 2
    # the weights after optimizer steps 15 and 20 (the last steps of the two cycles), exactly
    for member, k in zip(members.components, (15, 20), strict=True):
        assert torch.equal(member.mean, seen[k - 1][1])


@pytest.mark.slow
def test_sam_runs_take_two_passes_per_step_and_swag_collects_on_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = PRESETS["smoke"].replace(batch_size=8)
    x, y = torch.randn(80, 1, 28, 28), torch.randint(0, 10, (80,))
    runs = {}
    for kind in ("sgd", "sam", "swag_sam"):
        calls: list[int] = []
        monkeypatch.setattr(train_mod, "small_cnn", _counting_cnn(calls))
        runs[kind] = train_mod.train(
            cfg, x, y, kind=kind, seed=0, device=torch.device("cpu"), desc=kind,
            progress=Progress(enabled=False),
        )  # fmt: skip
        assert len(calls) == (1 if kind == "sgd" else 2) * 20, kind
    swag_sam = runs["swag_sam"]
    assert swag_sam.collector is not None and swag_sam.collector.n == 5
    assert swag_sam.collected_at == [12, 14, 16, 18, 20]
    # same initialisation and data order: SAM's different update is the only difference
    assert not torch.equal(runs["sgd"].model[0].weight, runs["sam"].model[0].weight)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="swa_epochs must be between 1 and epochs - 1"):
        BenchConfig(preset="x", epochs=3, swa_epochs=3)
    with pytest.raises(ValueError, match="num_samples >= members"):
        PRESETS["smoke"].replace(num_samples=1)


def test_collection_covers_the_rank_and_short_is_the_old_default() -> None:
    for cfg in PRESETS.values():
        assert cfg.swa_epochs * cfg.collects_per_epoch >= cfg.max_rank, cfg.preset
    assert (PRESETS["short"].epochs, PRESETS["short"].train_size) == (8, None)
    assert PRESETS["default"].epochs > PRESETS["short"].epochs


@pytest.mark.slow
@needs_data
def test_smoke_bench_writes_a_complete_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "run_seed", _cached_run_seed)
    rng_state = torch.get_rng_state()
    out = tmp_path / "run"
    # progress on, but stderr is no terminal here: plain lines, no carriage returns
    assert main(["bench", "--preset", "smoke", "--out", str(out)]) == 0
    assert torch.equal(torch.get_rng_state(), rng_state), "the bench must not touch the global RNG"
    err = capsys.readouterr().err
    if "predict" in err:  # this test did the real run (not a cached one)
        assert "\r" not in err
        for what in ("loading Fashion-MNIST", "train SGD run 1/2", "predict MultiSWAG:"):
            assert what in err
    assert "writing figures and report" in err
    summary = json.loads((out / "metrics.json").read_text(), parse_constant=_reject)
    assert list(summary["results"]) == ROWS
    for name, result in summary["results"].items():
        assert 0.0 <= result["accuracy"] <= 1.0, name
        assert result["nll"] > 0 and 0 <= result["ece"] <= 1, name
        assert 0 <= result["ood_auroc_entropy"] <= 1, name
    # mutual information exists only for methods with several samples: null, not NaN
    assert summary["results"]["SGD"]["ood_auroc_mi"] is None
    assert summary["results"]["SWAG"]["ood_auroc_mi"] is not None
    for key in ("SWAG scale", "MultiSWAG scale"):
        assert 0.01 <= summary["fitted"][key] <= 4.0
    assert summary["fitted"]["temperature"] > 0
    text = (out / "report.md").read_text()
    opening = text.split("\n\n")[1]
    assert 3 <= opening.count(". ") + 1 <= 6 and "lowest test NLL" in opening
    assert "SWAG scale" in opening and "took" in opening
    assert "| MultiSWAG (fitted scale) |" in text and "seed 0" in text
    for name in FGE_SAM:  # the FGE and SAM rows: on in the smoke preset
        assert f"| {name} |" in text and f"### {name}" in text, name
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "reliability_swag.png").is_file()
    assert (out / "ood_entropy_deep_ensemble.png").is_file()
    assert (out / "ood_mi_multiswag.png").is_file() and not (out / "ood_mi_sgd.png").exists()
    for pic in ("comparison.png", "reliability_mc_dropout.png", "ood_mi_swag_fitted_scale.png"):
        assert f"({pic})" in text, pic
    # issue 24: selective prediction, more OOD scores, conformal sets, shift intensities
    for name, result in summary["results"].items():
        assert 0 <= result["augrc"] <= 0.5 and 0 <= result["aurc"] <= 1, name
        assert 0 <= result["sel_acc_50"] <= 1 and 0 <= result["classwise_ece"] <= 1, name
        assert 0 <= result["ood_auroc_msp"] <= 1, name
        # every row keeps its logits but Laplace's, whose probit predictive has none
        for key in ("energy", "max_logit"):
            if name == "Laplace (last layer)":
                assert result[f"ood_auroc_{key}"] is None, (name, key)
            else:
                assert 0 <= result[f"ood_auroc_{key}"] <= 1, (name, key)
        for method in ("lac", "aps", "raps"):
            assert 0.5 <= result[f"conformal_coverage_{method}"] <= 1, (name, method)
            assert 0 <= result[f"conformal_size_{method}"] <= 10, (name, method)
    assert summary["results"]["SGD"]["ood_auroc_expected_entropy"] is None
    shifts = summary["shift_intensities"]
    assert list(shifts) == ROWS
    assert list(shifts["SWAG"]["mean"]) == ["1", "2", "3", "4", "5"]
    assert len(shifts["SWAG"]["rotate"]) == 7 and len(shifts["SWAG"]["pixelate"]) == 5
    assert summary["data"]["per_intensity_set"] == PRESETS["smoke"].intensity_size
    for section in ("## Selective prediction", "## OOD detection by score", "## Conformal"):
        assert section in text, section
    assert "degrades most gracefully" in text and "(shift_intensity.png)" in text
    assert (out / "shift_intensity.png").is_file()


def test_only_the_runs_the_rows_need_are_trained(monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[tuple[str, int]] = []

    def fake_train(*args: Any, kind: str, seed: int, **kwargs: Any) -> None:
        trained.append((kind, seed))

    def stop(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "load_data", lambda *args: (torch.zeros(1), None, None))
    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.setattr(runner, "method_predictions", stop)

    def runs(methods: list[str]) -> list[tuple[str, int]]:
        trained.clear()
        with pytest.raises(KeyboardInterrupt):
            runner.run_seed(
                PRESETS["smoke"], 3, device=torch.device("cpu"), data_dir=None,
                methods=methods, progress=Progress(enabled=False),
            )  # fmt: skip
        return trained

    assert runs(["SGD", "SWAG", "FGE", "SWAG (SAM)"]) == [
        ("sgd", 3000), ("swag", 3000), ("fge", 3000), ("swag_sam", 3000)
    ]  # fmt: skip
    assert runs(["SGD", "Deep ensemble", "SAM"]) == [("sgd", 3000), ("sam", 3000), ("sgd", 3001)]


@pytest.mark.slow
@needs_data
def test_skip_and_fge_sam_choose_the_rows(
    tmp_path: Path, cached_runs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main([*SMOKE, "--skip", "FGE", "--out", str(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "metrics.json").read_text())["results"]
    assert "FGE" not in rows and {"SWA (cyclical)", "SAM", "SWAG (SAM)"} <= set(rows)
    asked: list[list[str]] = []

    def fake_run_bench(cfg: BenchConfig, **kw: Any) -> dict[str, Any]:
        asked.append(kw["methods"])
        raise ValueError("stop here")

    monkeypatch.setattr(swag.bench, "run_bench", fake_run_bench)
    main(["bench", "--no-progress", "--out", str(tmp_path / "b")])  # default preset: off
    main(["bench", "--fge-sam", "--no-progress", "--out", str(tmp_path / "b")])
    main([*SMOKE, "--no-fge-sam", "--out", str(tmp_path / "b")])
    assert not set(FGE_SAM) & set(asked[0]) and set(FGE_SAM) <= set(asked[1])
    assert asked[2] == asked[0] and "MC dropout" in asked[0]
    # the Laplace and IVON rows: on in every preset (skipped later when not installed)
    assert set(BASELINES) <= set(asked[0]) and set(BASELINES) <= set(asked[2])
    main(["bench", "--no-baselines", "--no-progress", "--out", str(tmp_path / "b")])
    assert asked[3] == [m for m in asked[0] if m not in BASELINES]


@needs_data
def test_missing_baselines_are_skipped_with_the_install_command(
    tmp_path: Path,
    cached_runs: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as on a machine without the extra, whether or not this one has it
    hidden = set(BASELINES.values())
    real = evaluate.find_spec
    monkeypatch.setattr(evaluate, "find_spec", lambda m: None if m in hidden else real(m))
    skip = [m for m in ROWS if m not in ("SGD", "SWA", "SWAG", *BASELINES)]
    args = ["bench", "--preset", "smoke", "--skip", *skip, "--out", str(tmp_path / "a")]
    assert main(args) == 0  # the rows are on by default
    summary = json.loads((tmp_path / "a" / "metrics.json").read_text())
    err, report_md = capsys.readouterr().err, (tmp_path / "a" / "report.md").read_text()
    assert list(summary["results"]) == ["SGD", "SWA", "SWAG"]
    for name in BASELINES:
        line = (
            f"skipping {name}: its package is not installed; pip install 'swag-toolkit[baselines]'"
        )
        assert line in err and line in report_md
        assert any(line in n for n in summary["notes"])


@needs_data
def test_the_bench_weighs_multiswag_members_equally(tmp_path: Path, cached_runs: None) -> None:
    # smoke fits with 3 draws per candidate; MultiSWAG's 2 members each get 2, not 2 and 1
    assert PRESETS["smoke"].fit_samples % PRESETS["smoke"].members != 0
    assert main([*FEW, "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "MultiSWAG scale" in summary["fitted"]
    assert not [n for n in summary["notes"] if "not a multiple" in n], summary["notes"]


def _reject(constant: str) -> None:
    raise ValueError(f"metrics.json holds {constant}, which strict JSON parsers reject")


@pytest.mark.slow
@needs_data
def test_files_have_ordinary_modes(tmp_path: Path, cached_runs: None) -> None:
    assert main([*FEW, "--out", str(tmp_path / "run")]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.md", "metrics.json", "comparison.png"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask


@pytest.mark.slow
@needs_data
def test_several_seeds_write_a_mean_and_std_report(tmp_path: Path, cached_runs: None) -> None:
    out = tmp_path / "seeds"
    assert main([*FEW, "--seeds", "0", "1", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "seeds 0, 1" in text and " ± " in text and "minus SGD" in text
    assert (out / "seed-0" / "report.md").is_file() and (out / "seed-1" / "report.md").is_file()
    combined = json.loads((out / "metrics.json").read_text(), parse_constant=_reject)
    assert [s["settings"]["seed"] for s in combined["seeds"]] == [0, 1]


@pytest.mark.slow
@needs_data
def test_an_existing_run_is_never_silently_overwritten(
    tmp_path: Path, cached_runs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main([*FEW, "--out", str(out)]) == 0
    assert (out / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "run-2" / "report.md").is_file()
    assert f"{out} exists, so this run went to {out}-2" in capsys.readouterr().out
    assert main([*FEW, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "report.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-2"]  # no temp folder left


@pytest.mark.slow
@needs_data
def test_a_full_disk_leaves_no_half_report(
    tmp_path: Path,
    cached_runs: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = []

    def save(fig: Any, path: Path) -> None:
        if len(saved) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        fig.savefig(path)

    monkeypatch.setattr(report, "_save", save)
    assert main([*FEW, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the run nor its temporary folder


@pytest.mark.parametrize("where", ["file", "inside-file"])
def test_out_that_is_or_lies_in_a_file_fails_before_training(
    where: str, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    assert main([*SMOKE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file, not a folder" in err and err.count("\n") == 1


def test_unwritable_out_fails_before_training(
    tmp_path: Path,
    no_training: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def denied(**kwargs: Any) -> str:  # what mkdtemp raises in a read-only folder
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(outdir.tempfile, "mkdtemp", denied)
    assert main([*SMOKE, "--out", str(tmp_path / "ro" / "run")]) == 2
    assert "cannot write into" in capsys.readouterr().err


def test_out_on_a_full_disk_fails_before_training(
    tmp_path: Path,
    no_training: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))  # type: ignore[attr-defined]
    assert main([*SMOKE, "--out", str(tmp_path / "run")]) == 2
    assert "MB free" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 2"),
        (["--epochs", "3", "--swa-epochs", "3"], "--swa-epochs must be between 1 and --epochs"),
        (["--samples", "1"], "--samples must be >= 2"),
        (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1"),
        (["--seeds", "0", "0"], "--seeds lists a seed twice"),
    ],
)
def test_bad_flags_are_named_before_any_work(
    flags: list[str], message: str, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SMOKE, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "swa_epochs" not in err and "members" not in err.split("(")[0]


def test_every_flag_has_help_with_its_default_and_no_rest_markup() -> None:
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    bench = subparsers.choices["bench"]  # type: ignore[attr-defined]
    for action in bench._actions:
        if action.dest == "help":
            continue
        assert action.help and "(default" in action.help, action.option_strings
    for text in (parser.format_help(), bench.format_help()):
        assert "``" not in text and "`" not in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"swag {swag.__version__}"


def test_progress_prints_plain_lines_outside_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream, every=0.0)
    assert not progress.bars  # library tqdm bars stay off outside a terminal
    progress.note("predict SWAG: 30 samples")
    bar = progress.bar(3, "seed 0: train SGD run 1/3")
    for _ in range(3):
        bar.update()
    bar.set_postfix_str("loss 0.1")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].endswith("predict SWAG: 30 samples")
    assert lines[-1].endswith("seed 0: train SGD run 1/3: 3/3 steps (100%)")
    assert len(lines) == 4  # a line per update (every=0), none repeated at close
    silent = io.StringIO()
    Progress(enabled=False, stream=silent).note("x")
    assert silent.getvalue() == ""


def test_conclusions_name_the_winners_from_the_numbers() -> None:
    def result(nll: float, auroc: float) -> dict[str, float]:
        keys = ("accuracy", "ece", "brier", "shift_accuracy", "shift_nll", "shift_ece")
        out = dict.fromkeys(keys, 0.5) | {"nll": nll, "ood_auroc_entropy": auroc}
        return out | {"ood_auroc_mi": math.nan}

    summary = {
        "settings": {"seed": 3, "device": "cpu", "rotate_degrees": 45.0},
        "seconds": {"total": 120.0, "cpu": 60.0},
        "load": [0.5, 0.7],
        "fitted": {"temperature": 1.7, "SWAG scale": 0.25},
        "results": {"SGD": result(0.40, 0.70), "SWAG": result(0.30, 0.80)},
    }
    text = report.conclusions([summary])
    assert "SWAG has the lowest test NLL (0.300; SGD 0.400)" in text
    assert "SWAG does best (AUROC 0.800; SGD 0.700)" in text
    assert "temperature 1.7" in text and "SWAG scale 0.25" in text
    assert "took 2.0 min of wall time (1.0 min of CPU time)" in text and "FGE" not in text
    # the FGE and SAM rows, when run, get their sentence
    summary["settings"]["fge_cycles"] = 4
    fge, cyc, sam = result(0.2, 0.9), result(0.25, 0.9), result(0.3, 0.75)
    fge["accuracy"], cyc["accuracy"], sam["ece"] = 0.91, 0.905, 0.125
    summary["results"] |= {"FGE": fge, "SWA (cyclical)": cyc, "SAM": sam}
    text = report.conclusions([summary])
    assert "ensemble of 4 cycle-end snapshots reaches accuracy 0.910 and NLL 0.200" in text
    assert "(one network) 0.905 and 0.250" in text
    assert "SAM has ECE 0.125 and entropy AUROC 0.750 against SGD's 0.500 and 0.700" in text


def test_missing_data_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main([*SMOKE, "--data-dir", str(tmp_path), "--out", str(out)])
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no temp folder


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "is not a device name"), ("cuda", "sees no CUDA GPU")],
)
def test_unusable_device_is_a_clear_cli_error_before_any_work(
    device: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([*SMOKE, "--device", device]) == 2
    assert message in capsys.readouterr().err


def test_paper_claims_are_marked_from_the_means_with_a_seed_count() -> None:
    def run(sgd: float, swa: float, swag_: float) -> dict[str, Any]:
        results = {m: {"nll": v, "ece": 0.02} for m, v in (("SGD", sgd), ("SWA", swa))}
        results["SWAG"] = {"nll": swag_, "ece": 0.01}
        return {"results": results}

    # seed 2 breaks the order (SWAG > SWA); the means keep it
    lines = report.claims([run(0.40, 0.35, 0.30), run(0.41, 0.36, 0.31), run(0.40, 0.33, 0.34)])
    assert lines[0].startswith("- NLL: SWAG < SWA < SGD: **holds** on the mean")
    assert "SWAG 0.3167, SWA 0.3467, SGD 0.4033" in lines[0] and "on 2 of 3 seeds" in lines[0]
    assert lines[1].startswith("- ECE: SWAG < SGD: **holds**") and "on 3 of 3" in lines[1]
    assert len(lines) == 2  # no MultiSWAG or deep ensemble in these runs: no claim about them
    worse = report.claims([run(0.30, 0.35, 0.40)])
    assert "**fails**" in worse[0] and "on 0 of 1 seed." in worse[0]


@needs_data
@pytest.mark.slow
def test_laplace_and_ivon_rows_when_installed(tmp_path: Path) -> None:
    # ~30 s: skipped unless the extra swag-toolkit[baselines] is installed (scripts/setup.sh)
    pytest.importorskip("laplace")
    pytest.importorskip("ivon")
    cfg = PRESETS["smoke"].replace(baselines=True, intensity_size=0)
    result = runner.run_bench(
        cfg, out=tmp_path / "bl", methods=["SGD", *BASELINES], progress=Progress(enabled=False)
    )
    summary = result["runs"][0]
    assert list(summary["results"]) == ["SGD", *BASELINES]
    for name in BASELINES:
        r = summary["results"][name]
        assert 0.1 < r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ood_auroc_entropy"] <= 1
    assert summary["results"]["IVON"]["ood_auroc_mi"] is not None  # 30 (here 3) samples
    assert summary["fitted"]["Laplace prior precision"] > 0
    assert summary["seconds"]["train_per_kind"]["ivon"]
