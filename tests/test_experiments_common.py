"""experiments/_common.py: the results schema, the atomic results folder, the table, the loop;
and that no experiment script writes its results by hand."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from swag.optim import SAM
from tests.experiment_scripts import EXPERIMENTS, load_script

common = load_script("_common")


def results(verdict: str = "holds", seeds: tuple[int, ...] = (0, 1)) -> object:
    claim = common.Claim("SWA beats SGD | on NLL", verdict, {"nll SWA − SGD": [-0.1, -0.2]})
    return common.Results("demo", [claim], {"runs": [1, 2]}, {"epochs": 3}, list(seeds))


def test_verdict_is_holds_fails_or_mixed() -> None:
    assert common.verdict([True, True]) == "holds"
    assert common.verdict([False, False]) == "fails"
    assert common.verdict([True, False]) == "mixed"
    with pytest.raises(ValueError, match="outcomes"):
        common.verdict([])
    with pytest.raises(ValueError, match="verdict must be one of"):
        common.Claim("x", "HOLDS")


def test_write_makes_one_checked_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen: list[Path] = []

    def figures(folder: Path) -> None:
        seen.append(folder)
        (folder / "plot.png").write_bytes(b"png")

    assert common.write(out, results(), "| a |\n", figures) == out
    assert seen[0] != out and not seen[0].exists()  # drawn into the temporary sibling
    doc = common.load(out)
    assert doc == {
        "schema": "swag-experiment/1",
        "experiment": "demo",
        "claims": [
            {
                "claim": "SWA beats SGD | on NLL",
                "verdict": "holds",
                "numbers": {"nll SWA − SGD": [-0.1, -0.2]},
            }
        ],
        "numbers": {"runs": [1, 2]},
        "config": {"epochs": 3},
        "seeds": [0, 1],
    }
    md = (out / "results.md").read_text()
    assert md.startswith("| a |\n") and "| SWA beats SGD \\| on NLL | holds |" in md
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "results.json", "results.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary left behind


def test_write_replaces_a_results_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common.write(out, results(), "old\n", lambda f: (f / "stale.png").write_bytes(b"x"))
    common.write(out, results("fails"), "new\n")
    assert common.load(out)["claims"][0]["verdict"] == "fails"
    assert not (out / "stale.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failed_write_leaves_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common.write(out, results(), "old\n")

    def broken(folder: Path) -> None:
        (folder / "half.png").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        common.write(out, results("fails"), "new\n", broken)
    assert common.load(out)["claims"][0]["verdict"] == "holds"
    assert (out / "results.md").read_text().startswith("old")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_write_refuses_what_is_not_a_results_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"no results\.json; pick another --out"):
        common.write(tmp_path, results(), "")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file"):
        common.write(tmp_path / "notes.txt", results(), "")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("schema", "v0", "schema must be"),
        ("seeds", "0", "seeds must be a list"),
        ("seeds", [0.5], "seeds must be integers"),
        ("claims", [{"claim": "c", "verdict": "yes", "numbers": {}}], "each claim needs"),
        ("numbers", [], "numbers must be a dict"),
    ],
)
def test_check_names_the_bad_field(field: str, value: object, match: str) -> None:
    doc = results().to_json()  # type: ignore[attr-defined]
    common.check(doc)
    with pytest.raises(ValueError, match=match):
        common.check({**doc, field: value})


def test_table_and_seed_rows_against_numpy() -> None:
    runs = [
        {"A": {"acc": 0.9, "nll": 0.30}, "B": {"acc": 0.8, "nll": 0.45}},
        {"A": {"acc": 0.7, "nll": 0.35}, "B": {"acc": 0.75, "nll": 0.40}},
        {"A": {"acc": 0.8, "nll": 0.20}, "B": {"acc": 0.85, "nll": 0.50}},
    ]
    rows = common.seed_rows(runs, ["A", "B"], ["acc", "nll"], digits=3)
    a_acc = np.array([0.9, 0.7, 0.8])
    assert rows[0] == ["A", f"{a_acc.mean():.3f} ± {a_acc.std(ddof=1):.3f}", "0.283 ± 0.076"]
    diff = np.array([0.45 - 0.30, 0.40 - 0.35, 0.50 - 0.20])
    (paired,) = common.paired_rows(runs, [("B", "A")], ["nll"], digits=3)
    assert paired == ["B − A", f"+{diff.mean():.3f} ± {diff.std(ddof=1):.3f}"]
    assert common.cell([1.5]) == "1.5000 ± 0.0000"  # one seed: no spread
    text = common.table(["method", "acc"], [["a|b", 1]])
    assert text == "| method | acc |\n|---|---:|\n| a\\|b | 1 |\n"
    assert statistics.fmean(a_acc.tolist()) == pytest.approx(0.8)


def test_train_matches_a_hand_written_loop() -> None:
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))

    ref = net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        order = torch.randperm(50, generator=g)
        for i in range(0, 50, 16):
            idx = order[i : i + 16]
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps: list[int] = []
    epochs: list[int] = []
    done = common.train(model, opt, x, y, epochs=3, batch_size=16,
                        generator=torch.Generator().manual_seed(1),
                        after_step=steps.append, after_epoch=epochs.append)  # fmt: skip
    assert done == 12 and steps == list(range(1, 13)) and epochs == [1, 2, 3]
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_train_gives_sam_its_closure() -> None:
    model = nn.Linear(3, 2)
    calls: list[int] = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return nn.functional.cross_entropy(out, y)

    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    g = torch.Generator().manual_seed(0)
    common.train(model, opt, x, y, epochs=1, batch_size=4, generator=g, loss_fn=loss_fn)
    assert len(calls) == 4  # two steps, two passes each


WRITES = re.compile(r"""\bopen\([^)]*["'][wax]b?["']|json\.dump\(|\.write_text\(|\.write_bytes\(""")


def test_no_script_writes_results_by_hand() -> None:
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(EXPERIMENTS.glob("*.py"))
        if path.name != "_common.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if WRITES.search(line)
    ]
    assert offenders == [], f"write through experiments/_common.py instead: {offenders}"
    assert WRITES.search('(out / "results.json").write_text(json.dumps(doc))')
    assert WRITES.search("with open(path, 'w') as f:")
