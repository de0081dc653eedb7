"""What every experiment shares: one results schema, one atomic results folder, one table.

A script measures; this module records. Each run's folder holds ``results.json`` in the schema
below, ``results.md`` (the tables) and whatever figures the script draws, written together into a
temporary sibling folder that replaces ``--out`` only when all of it is written: a crash leaves
the old folder or the new one, never half of each.

The schema (``results.json``)::

    {"schema": "swag-experiment/1", "experiment": NAME,
     "claims": [{"claim": TEXT, "verdict": "holds" | "fails" | "mixed", "numbers": {...}}],
     "numbers": {...}, "config": {...}, "seeds": [INT, ...]}

``numbers`` holds every measurement (free-form, JSON-able); each claim's ``numbers`` the few that
decide its verdict. ``mixed``: it holds on some seeds (or settings) and fails on others.

swag's own atomic writer is private (``swag._io``), so this folder swap is written here, kept to
the rename dance the benchmark's run folder uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from swag.bench import batches
from swag.data import load_fashion_mnist
from swag.lowp import QuantizedOptimizer
from swag.optim import SAM

SCHEMA = "swag-experiment/1"
Runs = Sequence[Mapping[str, Mapping[str, float]]]
"""Per seed, ``{method: {metric: value}}``."""
VERDICTS = ("holds", "fails", "mixed")
FILES = ("results.json", "results.md")


@dataclass(frozen=True)
class Claim:
    """A claim from the literature, its verdict at our scale, and the numbers behind it."""

    claim: str
    verdict: str
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def verdict(outcomes: Sequence[bool]) -> str:
    """``holds`` if every outcome (one per seed or setting) is true, ``fails`` if none, else
    ``mixed``."""
    if not outcomes:
        raise ValueError("outcomes must hold at least one seed's outcome, got none")
    return "holds" if all(outcomes) else "fails" if not any(outcomes) else "mixed"


def paired_claim(
    claim: str,
    runs: Runs,
    pair: tuple[str, str],
    metric: str,
    passes: Callable[[float], bool],
) -> Claim:
    """A claim decided per seed on ``method − reference`` (``pair``) of ``metric`` in ``runs``
    (per seed, ``{method: {metric: value}}``): ``passes(difference)`` per seed, the verdict over
    the seeds, the differences as its numbers."""
    method, ref = pair
    diffs = [r[method][metric] - r[ref][metric] for r in runs]
    return Claim(claim, verdict([passes(d) for d in diffs]), {f"{metric} {method} − {ref}": diffs})


@dataclass(frozen=True)
class Results:
    """One run of one experiment, in the schema of ``results.json``."""

    experiment: str
    claims: Sequence[Claim]
    numbers: Mapping[str, Any]
    config: Mapping[str, Any]
    seeds: Sequence[int]

    def to_json(self) -> dict[str, Any]:
        """The document written to ``results.json``."""
        return {
            "schema": SCHEMA,
            "experiment": self.experiment,
            "claims": [
                {"claim": c.claim, "verdict": c.verdict, "numbers": dict(c.numbers)}
                for c in self.claims
            ],
            "numbers": dict(self.numbers),
            "config": dict(self.config),
            "seeds": list(self.seeds),
        }


def check(doc: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field if ``doc`` is not a ``results.json`` document."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    kinds = {"experiment": str, "claims": list, "numbers": dict, "config": dict, "seeds": list}
    for key, kind in kinds.items():
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"{key} must be a {kind.__name__}, got {type(doc.get(key)).__name__}")
    for c in doc["claims"]:
        if set(c) != {"claim", "verdict", "numbers"} or c["verdict"] not in VERDICTS:
            raise ValueError(f"each claim needs claim, verdict in {VERDICTS} and numbers; got {c}")
    if not all(isinstance(s, int) for s in doc["seeds"]):
        raise ValueError(f"seeds must be integers, got {doc['seeds']}")


def load(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``results.json`` from a results folder."""
    doc: dict[str, Any] = json.loads((Path(out) / "results.json").read_text())
    check(doc)
    return doc


def write(
    out: str | os.PathLike[str],
    results: Results,
    markdown: str,
    figures: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``results.json``, ``results.md`` (``markdown``, then the claims' verdicts) and
    ``figures(folder)`` as one folder at ``out``.

    Everything goes to a temporary sibling that then replaces ``out`` by rename. An existing
    ``out`` is replaced only if it is empty or a results folder (it holds ``results.json``).

    Raises:
        ValueError: ``out`` is a file, or a folder of something else (pick another ``--out``).
    """
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise ValueError(f"--out {final} is a file; pick a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / "results.json").is_file():
        raise ValueError(f"--out {final} holds files but no results.json; pick another --out")
    doc = results.to_json()
    check(doc)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        (tmp / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        verdicts = [[c.claim, c.verdict] for c in results.claims]
        claims = "\n" + table(["claim", "verdict"], verdicts) if verdicts else ""
        (tmp / "results.md").write_text(markdown + claims)
        if figures is not None:
            figures(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def parser(
    description: str,
    defaults: Mapping[str, object],
    *,
    helps: Mapping[str, str] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    """A command line with one ``--name`` option per entry of ``defaults`` (``_`` → ``-``).

    The default gives the type: a list takes one or more values of its items' type, ``False`` is
    a switch, ``None`` a path (e.g. ``docs=None``: ``--docs`` for an extra copy of the figures).
    """
    p = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    for name, default in defaults.items():
        flag, text = "--" + name.replace("_", "-"), (helps or {}).get(name)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=text)
            continue
        many = isinstance(default, list)
        kind = type(default[0]) if many else Path if default is None else type(default)  # type: ignore[index]
        p.add_argument(flag, type=kind, default=default, nargs="+" if many else None, help=text,
                       choices=(choices or {}).get(name))  # fmt: skip
    return p


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed command line as JSON-able settings (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


@dataclass(frozen=True)
class Images:
    """Fashion-MNIST: ``(N, 1, 28, 28)`` images in [0, 1] and ``(N,)`` labels for training,
    validation (none unless asked for) and test."""

    x: Tensor
    y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor


def fashion_mnist(
    train_size: int | None, test_size: int | None, *, seed: int = 0, val_size: int = 0
) -> Images:
    """A random permutation of the training images (from ``seed``): the first ``val_size`` for
    validation, the next ``train_size`` (None: the rest) for training; the first ``test_size``
    test images (None: all)."""
    x, y = load_fashion_mnist("train")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, rest = order[:val_size], order[val_size:]
    train = rest[:train_size] if train_size else rest
    tx, ty = load_fashion_mnist("test")
    return Images(x[train], y[train], x[val], y[val], tx[:test_size], ty[:test_size])


def cell(values: Sequence[float], digits: int = 4, *, signed: bool = False) -> str:
    """``mean ± std`` of ``values`` (std 0 for one value), ``digits`` decimals."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    sign = "+" if signed else ""
    return f"{statistics.fmean(values):{sign}.{digits}f} ± {std:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table: the first column left-aligned (labels), the others right-aligned.
    A ``|`` inside a cell is escaped."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|---|" + "---:|" * (len(header) - 1), *map(line, rows)]
    return "\n".join(lines) + "\n"


def seed_rows(
    runs: Runs, methods: Sequence[str], metrics: Sequence[str], digits: int = 4
) -> list[list[str]]:
    """Rows of :func:`table`: per method, ``mean ± std`` over ``runs`` of each metric."""
    return [[m, *(cell([r[m][k] for r in runs], digits) for k in metrics)] for m in methods]


def paired_rows(
    runs: Runs, pairs: Sequence[tuple[str, str]], metrics: Sequence[str], digits: int = 4
) -> list[list[str]]:
    """Rows of :func:`table`: per ``(method, reference)``, the per-seed difference
    ``method − reference`` of each metric, ``mean ± std`` over ``runs``."""
    return [
        [
            f"{m} − {ref}",
            *(cell([r[m][k] - r[ref][k] for r in runs], digits, signed=True) for k in metrics),
        ]
        for m, ref in pairs
    ]


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer | QuantizedOptimizer,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    after_step: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], None] | None = None,
    desc: str | None = None,
) -> int:
    """``epochs`` shuffled passes of minibatch steps on ``loss_fn(model(x_batch), y_batch)``.

    Batches come from :func:`swag.bench.batches` (``x`` ``(N, ...)``, ``y`` ``(N, ...)``).
    :class:`swag.optim.SAM` gets the loss as a closure (its two passes); any other optimizer
    one backward pass and ``step()``. ``after_step(step)`` runs after each step (counted from
    1: schedulers, collectors), ``after_epoch(epoch)`` after each epoch (from 1; the rate of
    the next epoch). ``desc`` shows a tqdm bar of epochs. Returns the number of steps.
    """
    model.train()
    step = 0
    for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=desc is None, leave=False):
        for xb, yb in batches(x, y, batch_size, generator):

            def closure(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
                loss = loss_fn(model(xb), yb)
                loss.backward()  # type: ignore[no-untyped-call]
                return loss

            opt.zero_grad(set_to_none=True)
            if isinstance(opt, SAM):
                opt.step(closure)
            else:
                closure()
                opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
        if after_epoch is not None:
            after_epoch(epoch)
    return step
