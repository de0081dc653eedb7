"""SGD, SWA, SWAG and temperature-scaled SGD on scikit-learn's digits: a quick calibration table.

An MLP (64 → 256 → 256 → 10) trained with SGD long past zero training loss, so that SGD is
overconfident; the SWAG run is the same run continued at a constant rate with one collect per
epoch. Usage::

    .venv/bin/python experiments/digits.py --seeds 0 1 2 --out runs/digits
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import _common
import torch
from torch import nn

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

    def decay(done: int) -> None:  # the rate of epoch `done` (0-based): linear 50% → 90%
        for group in opt.param_groups:
            t = done / cfg.epochs
            group["lr"] = cfg.lr * (1 - 0.99 * min(max((t - 0.5) / 0.4, 0.0), 1.0))

    data = (x_train, y_train)
    _common.train(sgd, opt, *data, epochs=cfg.epochs, batch_size=cfg.batch_size, generator=g,
                  after_epoch=decay)  # fmt: skip

    model = mlp(seed)
    opt2 = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
    )
    collector = swag.Collector(model, max_rank=cfg.max_rank)

    def swag_phase(done: int) -> None:  # collect after each epoch of the constant phase
        if done > cfg.epochs:
            collector.collect()
        for group in opt2.param_groups:
            group["lr"] = cfg.lr if done < cfg.epochs else cfg.swa_lr

    _common.train(model, opt2, *data, epochs=cfg.epochs + cfg.swa_epochs,
                  batch_size=cfg.batch_size, generator=g, after_epoch=swag_phase)  # fmt: skip
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


def claims(results: list[dict[str, dict[str, float]]]) -> list[_common.Claim]:
    """Per seed, does each method lower the test NLL of the one it refines?"""
    pairs = (("SWA", "SGD"), ("SWAG", "SWA"), ("SGD + temp. scaling", "SGD"))
    return [
        _common.paired_claim(f"{m} has a lower test NLL than {ref}", results, (m, ref), "nll",
                             lambda d: d < 0)
        for m, ref in pairs
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=Config.epochs)
    parser.add_argument("--swa-epochs", type=int, default=Config.swa_epochs)
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    cfg = Config(epochs=args.epochs, swa_epochs=args.swa_epochs)
    results = [run(seed, cfg) for seed in args.seeds]
    text = _common.table(["method", *METRICS], _common.seed_rows(results, METHODS, METRICS))
    print(text)
    if args.out:
        found = claims(results)
        numbers = {"results": results}
        _common.write(
            args.out, _common.Results("digits", found, numbers, asdict(cfg), args.seeds), text
        )
    return results


if __name__ == "__main__":
    main()
