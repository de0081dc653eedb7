"""SGD, SWA, SWAG and temperature-scaled SGD on scikit-learn's digits: a quick calibration table.

An MLP (64 → 256 → 256 → 10) trained with SGD long past zero training loss, so that SGD is
overconfident; the SWAG run is the same run continued at a constant rate with one collect per
epoch. Usage::

    .venv/bin/python experiments/digits.py --seeds 0 1 2 --out runs/digits
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import swag
from swag.data import load_sklearn, train_test_split

METHODS = ("SGD", "SWA", "SWAG", "SGD + temp. scaling")
METRICS = ("accuracy", "nll", "ece", "brier")


@dataclass(frozen=True)
class Config:
    """The training budget and the SWAG settings."""

    epochs: int = 150  # SGD at lr, linear decay to lr / 100 between 50% and 90% of the run
    swa_epochs: int = 50  # the SWAG run: `epochs` at lr, then this many at swa_lr, collecting
    lr: float = 0.05
    swa_lr: float = 0.05
    weight_decay: float = 5e-4  # the SWAG paper's value for CIFAR
    batch_size: int = 64
    max_rank: int = 20
    scale: float = 0.5
    num_samples: int = 30


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    g: torch.Generator,
    batch: int,
) -> None:
    order = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), batch):
        idx = order[i : i + batch]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def run(seed: int, cfg: Config) -> dict[str, dict[str, float]]:
    """One seed: train SGD and SWAG, evaluate the four methods on the test split."""
    x, y = load_sklearn("digits", flatten=True)
    split = torch.Generator().manual_seed(seed)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_fraction=0.3, generator=split)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_fraction=0.2, generator=split
    )
    g = torch.Generator().manual_seed(seed)

    sgd = mlp(seed)
    opt = torch.optim.SGD(sgd.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    for e in range(cfg.epochs):
        t = e / cfg.epochs
        decay = min(max((t - 0.5) / 0.4, 0.0), 1.0)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (1 - 0.99 * decay)
        epoch(sgd, opt, x_train, y_train, g, cfg.batch_size)

    model = mlp(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
    )
    collector = swag.Collector(model, max_rank=cfg.max_rank)
    for e in range(cfg.epochs + cfg.swa_epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr if e < cfg.epochs else cfg.swa_lr
        epoch(model, opt, x_train, y_train, g, cfg.batch_size)
        if e >= cfg.epochs:
            collector.collect()
    posterior = collector.posterior()

    sgd.eval()
    with torch.no_grad():
        logits_test, logits_val = sgd(x_test), sgd(x_val)
    temperature = swag.fit_temperature(logits_val, y_val)
    probs = {
        "SGD": logits_test.softmax(-1),
        "SWA": swag.predict(swag.PointPosterior(posterior.mean, posterior.layout), model, [x_test]),
        "SWAG": swag.predict(
            posterior,
            model,
            [x_test],
            num_samples=cfg.num_samples,
            scale=cfg.scale,
            generator=torch.Generator().manual_seed(seed),
        ),
        "SGD + temp. scaling": swag.apply_temperature(logits_test, temperature).softmax(-1),
    }
    return {m: {k: swag.metrics.summary(p, y_test)[k] for k in METRICS} for m, p in probs.items()}


def table(results: list[dict[str, dict[str, float]]]) -> str:
    """Markdown: mean ± std over seeds per method and metric."""
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for m in METHODS:
        cells = []
        for k in METRICS:
            values = [r[m][k] for r in results]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=Config.epochs)
    parser.add_argument("--swa-epochs", type=int, default=Config.swa_epochs)
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    cfg = Config(epochs=args.epochs, swa_epochs=args.swa_epochs)
    results = [run(seed, cfg) for seed in args.seeds]
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"settings": asdict(cfg), "seeds": args.seeds, "results": results}
        (args.out / "results.json").write_text(json.dumps(doc, indent=1))
        (args.out / "results.md").write_text(text)
    return results


if __name__ == "__main__":
    main()
