"""Weight averaging for a small byte-level causal transformer LM on the Python standard library.

Claims tested (LAWA: Kaddour 2022, Sanyal et al. 2023; post-hoc EMA: Karras et al. 2024):

1. averaging (EMA, LAWA) beats the latest iterate mid-training (constant learning rate);
2. post-hoc EMA finds the best EMA length after the fact: the σ_rel it picks on a selection
   split is as good on the test split as the best of direct power-EMA runs of a grid of σ_rel.

Data: the ``.py`` files directly in this Python's ``stdlib`` folder, sorted by name; every
tenth file is held out (half of those for selecting σ_rel/decay, half for testing), the rest
train. Bytes are tokens (vocabulary 256). AdamW, linear warmup then a constant rate.

Usage::

    .venv/bin/python experiments/averaging_lm.py --out runs/averaging_lm --docs docs/img
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import swag

GRID = (0.015, 0.03, 0.07, 0.12, 0.2)  # σ_rel: direct runs and post-hoc candidates
DECAYS = (0.99, 0.998)
EMAS = {
    **{f"EMA {d}": swag.EMA(d) for d in DECAYS},
    "EMA 0.998 warmup": swag.EMA(0.998, warmup=True),
}


@dataclass(frozen=True)
class Config:
    """Training (AdamW, linear warmup then constant), data, model, evaluation and averaging."""

    steps: int = 800
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    context: int = 96  # bytes per window
    batch: int = 16  # windows per step
    max_train_bytes: int = 3_000_000
    dropout: float = 0.0
    width: int = 96
    layers: int = 2
    heads: int = 4
    eval_every: int = 100
    eval_batches: int = 6
    lawa: swag.LAWA = field(default_factory=lambda: swag.LAWA(5))  # every `lawa_every` steps
    posthoc_every: int = 25
    lawa_every: int = 25
    seed: int = 0


def stdlib_bytes(max_train: int) -> dict[str, Tensor]:
    """Train, select and test byte streams from the stdlib's top-level ``.py`` files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if len(files) < 20:
        raise RuntimeError(f"found only {len(files)} .py files in {root}; need 20")
    parts: dict[str, list[bytes]] = {"train": [], "select": [], "test": []}
    for i, path in enumerate(files):
        split = "train" if i % 10 else ("select" if i % 20 == 0 else "test")
        parts[split].append(path.read_bytes())
    out = {}
    for split, chunks in parts.items():
        data = b"\n".join(chunks)
        out[split] = torch.frombuffer(bytearray(data[:max_train]), dtype=torch.uint8).long()
    return out


class ByteLM(nn.Module):
    """A pre-norm causal transformer over bytes: embedding, ``layers`` blocks, tied output."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.context, cfg.width))
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg.context))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T)`` bytes → ``(B, T, 256)`` logits of the next byte."""
        t = x.shape[1]
        mask = self.get_buffer("mask")
        h = self.blocks(self.emb(x) + self.pos[:t], mask=mask[:t, :t], is_causal=True)
        logits: Tensor = self.norm(h) @ self.emb.weight.T
        return logits


def batch(data: Tensor, cfg: Config, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``cfg.batch`` random windows: inputs and next-byte targets, ``(B, T)`` each."""
    starts = torch.randint(0, data.numel() - cfg.context - 1, (cfg.batch,), generator=gen)
    idx = starts[:, None] + torch.arange(cfg.context + 1)
    w = data[idx]
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def loss_of(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Mean next-byte cross-entropy (nats) over fixed batches."""
    model.eval()
    total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches)
    model.train()
    return total / len(batches)


def flat(layout: swag.ParamLayout, model: nn.Module) -> Tensor:
    """The covered parameters of ``model`` as one ``(P,)`` tensor."""
    return torch.cat([p.detach().reshape(-1) for p in layout.resolve(model)])


def run(cfg: Config) -> dict[str, object]:
    """Train once; every ``eval_every`` steps, the select/test loss of each average."""
    torch.manual_seed(cfg.seed)  # experiment script: model initialisation
    data = stdlib_bytes(cfg.max_train_bytes)
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed = {
        s: [batch(data[s], cfg, gen) for _ in range(cfg.eval_batches)] for s in ("select", "test")
    }
    model = ByteLM(cfg)
    probe = ByteLM(cfg)  # evaluates the averages; its parameters are overwritten each time
    layout = swag.ParamLayout.from_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    emas = {k: swag.Collector(model, 0, average=r, variance=False) for k, r in EMAS.items()}
    direct = {
        s: swag.Collector(model, 0, average=swag.PowerEMA(sigma_rel=s), variance=False)
        for s in GRID
    }
    lawa = swag.Collector(model, 0, average=cfg.lawa)
    posthoc = swag.PostHocEMA(model, every=cfg.posthoc_every)

    def score(theta: Tensor) -> dict[str, float]:
        layout.scatter(theta, probe)
        return {s: loss_of(probe, b) for s, b in fixed.items()}

    curves: list[dict[str, object]] = []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x, y = batch(data["train"], cfg, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        for c in (*emas.values(), *direct.values()):
            c.collect()
        posthoc.collect()
        if step % cfg.lawa_every == 0:
            lawa.collect()
        if step % cfg.eval_every:
            continue
        row: dict[str, object] = {"step": step, "latest": score(flat(layout, model))}
        for k, c in emas.items():
            row[k] = score(c.mean)
        row["LAWA"] = score(lawa.mean)
        row["direct"] = {str(s): score(c.mean) for s, c in direct.items()}
        post = {str(s): score(posthoc.reconstruct(sigma_rel=s)) for s in GRID}
        best = min(post, key=lambda s: post[s]["select"])
        row["post-hoc"] = {**post[best], "sigma_rel": float(best)}
        curves.append(row)
    return {"config": asdict(cfg), "curves": curves, "seconds": time.perf_counter() - start}


TOLERANCE = 0.01  # nats: "as good as" for claim 2 (the spread of the grid's best runs is ~0.01)


def claims(result: dict[str, object]) -> list[_common.Claim]:
    """Each claim's measurement on the test split, and its verdict (claim 1 per rule)."""
    curves: list[dict[str, object]] = result["curves"]  # type: ignore[assignment]
    mid = curves[len(curves) // 2 - 1]
    rules = [*EMAS, "LAWA", "post-hoc"]

    def test(row: dict[str, object], key: str) -> float:
        value: dict[str, float] = row[key]  # type: ignore[assignment]
        return value["test"]

    latest = test(mid, "latest")
    beats = {r: test(mid, r) - latest for r in rules}
    wins = {r: sum(test(c, r) < test(c, "latest") for c in curves) for r in rules}
    last = curves[-1]
    direct: dict[str, dict[str, float]] = last["direct"]  # type: ignore[assignment]
    best_direct = min(direct, key=lambda s: direct[s]["test"])
    post: dict[str, float] = last["post-hoc"]  # type: ignore[assignment]
    gap = post["test"] - direct[best_direct]["test"]
    return [
        _common.Claim(
            "averaging (each EMA, LAWA, post-hoc EMA) beats the latest iterate mid-training",
            _common.verdict([beats[r] < 0 for r in rules]),
            {
                "mid_step": mid["step"],
                "mid_minus_latest": beats,
                "evals_beating_latest": {r: f"{wins[r]}/{len(curves)}" for r in rules},
            },
        ),
        _common.Claim(
            f"post-hoc EMA finds the best EMA length after the fact (within {TOLERANCE} nats "
            "of the best direct power-EMA run)",
            _common.verdict([gap <= TOLERANCE]),
            {
                "posthoc_sigma_rel": post["sigma_rel"],
                "best_direct_sigma_rel": float(best_direct),
                "posthoc_minus_best_direct": gap,
            },
        ),
    ]


def plot(result: dict[str, object], path: Path) -> None:
    """Test loss against step for the latest iterate and each average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: list[dict[str, Any]] = result["curves"]  # type: ignore[assignment]
    steps = [c["step"] for c in curves]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ["latest", *EMAS, "LAWA", "post-hoc"]:
        ax.plot(steps, [c[key]["test"] for c in curves], label=key, marker=".")
    latest = [c["latest"]["test"] for c in curves]
    low = min(min(c[k]["test"] for k in ("latest", "post-hoc")) for c in curves)
    # the long fixed-decay EMAs start far above (they average the initialisation): clip the axis
    ax.set_ylim(low - 0.02, max(latest[len(latest) // 4 :]) + 0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("test loss (nats / byte)")
    ax.set_title("byte-level LM on the Python stdlib")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/averaging_lm")
    p.add_argument("--docs", help="also write the plot here (e.g. docs/img)")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny run for the tests")
    args = p.parse_args(argv)
    cfg = Config(steps=args.steps, seed=args.seed)
    if args.quick:
        cfg = Config(
            steps=20, eval_every=10, context=16, batch=4, width=16, layers=1, heads=2, warmup=5,
            max_train_bytes=20_000, eval_batches=2, lawa_every=2, posthoc_every=2, seed=args.seed,
        )  # fmt: skip
    result = run(cfg)
    found = claims(result)
    numbers = {"curves": result["curves"], "seconds": result["seconds"]}
    doc = _common.Results("averaging_lm", found, numbers, asdict(cfg), [cfg.seed])
    keys = ["latest", *EMAS, "LAWA", "post-hoc"]
    curves: list[dict[str, Any]] = result["curves"]  # type: ignore[assignment]
    rows = [[c["step"], *(f"{c[k]['test']:.4f}" for k in keys)] for c in curves]
    text = "Test loss (nats / byte) per evaluation:\n\n" + _common.table(["step", *keys], rows)
    _common.write(args.out, doc, text, lambda folder: plot(result, folder / "averaging_lm.png"))
    if args.docs:
        plot(result, Path(args.docs) / "averaging_lm.png")
    print(text + "".join(f"\n{c.claim}: {c.verdict}" for c in found))
    return doc.to_json()


if __name__ == "__main__":
    main()
