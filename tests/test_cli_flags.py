"""Every flag of ``swag bench`` given twice: both take effect, or it is refused (issue 18, 8).

The audit table names every flag the parser has, so a new flag fails
:func:`test_every_flag_is_audited` until it is classified here.
"""

from __future__ import annotations

import argparse

import pytest

from swag.cli import _config, _parser, main

# flag -> two values; None for a flag without a value
SINGLE = {
    "--preset": ("smoke", "short"),
    "--seed": ("1", "2"),
    "--epochs": ("4", "5"),
    "--swa-epochs": ("1", "2"),
    "--samples": ("3", "4"),
    "--device": ("cpu", "cpu"),  # even the same value twice: one of them was a slip
    "--out": ("a", "b"),
    "--data-dir": ("a", "b"),
}
REPEATABLE = {"--skip": ("FGE", "SAM"), "--seeds": ("1", "2")}  # both take effect
IDEMPOTENT = {"--overwrite", "--no-progress"}  # on/off switches with one meaning
TOGGLES = {"--fge-sam", "--no-fge-sam", "--baselines", "--no-baselines"}  # one of the pair, once
OUTSIDE = {"-h", "--help"}


def _bench() -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    bench: argparse.ArgumentParser = sub.choices["bench"]
    return bench


def test_every_flag_is_audited() -> None:
    flags = {o for a in _bench()._actions for o in a.option_strings}
    assert flags == set(SINGLE) | set(REPEATABLE) | IDEMPOTENT | TOGGLES | OUTSIDE


@pytest.mark.parametrize("flag", list(SINGLE))
def test_a_single_valued_flag_given_twice_is_refused_by_name(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = SINGLE[flag]
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["bench", flag, first, flag, second])
    assert exit_.value.code == 2
    assert f"{flag} given twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--fge-sam", "--no-fge-sam"],
        ["--no-fge-sam", "--fge-sam"],
        ["--fge-sam", "--fge-sam"],
        ["--baselines", "--no-baselines"],
        ["--no-baselines", "--no-baselines"],
    ],
)
def test_a_toggle_is_given_once(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", *args])
    assert f"{args[1]} given twice (after {args[0]})" in capsys.readouterr().err


@pytest.mark.parametrize("flag", list(REPEATABLE))
def test_a_repeatable_flag_keeps_every_occurrence(flag: str) -> None:
    first, second = REPEATABLE[flag]
    args = _parser().parse_args(["bench", flag, first, flag, second])
    assert getattr(args, flag.removeprefix("--")) == [
        int(v) if flag == "--seeds" else v for v in (first, second)
    ]


@pytest.mark.parametrize("flag", sorted(IDEMPOTENT))
def test_a_switch_given_twice_means_the_same(flag: str) -> None:
    twice = _parser().parse_args(["bench", flag, flag])
    once = _parser().parse_args(["bench", flag])
    assert vars(twice) == vars(once)


def test_skip_twice_leaves_out_both_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[str]] = {}

    def fake_run(cfg: object, **kw: object) -> dict[str, object]:
        seen["methods"] = list(kw["methods"])  # type: ignore[call-overload]
        raise ValueError("stop here")

    monkeypatch.setattr("swag.bench.run_bench", fake_run)
    code = main(["bench", "--preset", "smoke", "--skip", "FGE", "--skip", "SAM", "--no-progress"])
    assert code == 2  # the fake's ValueError
    assert "FGE" not in seen["methods"] and "SAM" not in seen["methods"]
    assert "SWAG" in seen["methods"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1", "-3"], "--seeds must be between 0 and 2**32 - 1, got -3"),
        (["--seeds", "1", "--seeds", "1"], "--seeds lists a seed twice"),
        (["--seed", str(2**32)], "--seed must be between"),
    ],
)
def test_seed_errors_name_the_flag_used(argv: list[str], message: str) -> None:
    args = _parser().parse_args(["bench", *argv])
    seeds = args.seeds or [args.seed]
    cfg, problem = _config(args, seeds)
    assert cfg is None and problem is not None and problem.startswith(message)
