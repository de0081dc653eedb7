"""The composability matrix (issue 19): every posterior kind in every consumer.

Each cell either matches an independent reference (float64 forward passes, torch's own
``update_bn``, a brute-force scale grid, the members' own draws, exact tensors), or is refused
with an error that names what to use instead. ``docs/guarantees.md`` holds the table this test
produces; ``SWAG_WRITE_DOCS=1`` rewrites it, and the test fails when it is stale.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import swag
from swag.core.distributed._shard import ShardPlan
from swag.core.distributed.sharded import ShardedPosterior
from swag.landscape import Plane
from tests import callback_runs
from tests.kinds import KINDS, Net, make_model, swag_posterior

DOCS = Path(__file__).parents[1] / "docs" / "guarantees.md"
BEGIN, END = "<!-- composability matrix: begin -->", "<!-- composability matrix: end -->"


def sharded_w1() -> ShardedPosterior:
    """One rank's part at world size 1 (no process group is needed for what is checked here)."""
    p = swag_posterior()
    return ShardedPosterior(p.mean, p.std, p.deviations, ShardPlan(p.layout, 0, 1), p.n)


ROWS: dict[str, Callable[[], swag.Posterior]] = {**KINDS, "sharded (one rank's part)": sharded_w1}
X = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))
BN_DATA = [torch.randn(16, 4, generator=torch.Generator().manual_seed(2))]


def _spy(post: swag.Posterior, monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    """Record every θ predict writes into its working model."""
    seen: list[Tensor] = []
    apply_ = type(post).apply_

    def spy(self: swag.Posterior, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        seen.append((self.mean if theta is None else theta).detach().clone())
        return apply_(self, model, theta)

    monkeypatch.setattr(type(post), "apply_", spy)
    return seen


def _forward64(theta: Tensor, x: Tensor, hidden: Tensor | None = None) -> Tensor:
    """softmax of the Net at θ in float64 (``hidden``: the post-dropout activations)."""
    t = theta.double()
    w1, b1, w2, b2 = t[:20].view(5, 4), t[20:25], t[25:40].view(3, 5), t[40:43]
    h = torch.tanh(x.double() @ w1.T + b1) if hidden is None else hidden.double()
    return (h @ w2.T + b2).softmax(-1)


def cell_predict(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    seen = _spy(post, mp)
    got = swag.predict(post, make_model(), [X], num_samples=4,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert len(seen) == 4
    ref = torch.stack([_forward64(t, X) for t in seen]).mean(0)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    return "float64 forward of each drawn θ, averaged"


def cell_predict_bn(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    seen = _spy(post, mp)
    model = make_model(batchnorm=True)
    got = swag.predict(
        post,
        model,
        [X],
        num_samples=4,
        generator=torch.Generator().manual_seed(3),
        options=swag.PredictOptions(bn=swag.BNRefresh(BN_DATA)),
    )
    refs = []
    for theta in seen:  # torch's own update_bn on a fresh copy holding θ
        net = copy.deepcopy(model)
        post.layout.scatter(theta, net)
        torch.optim.swa_utils.update_bn(BN_DATA, net)
        with torch.no_grad():
            refs.append(net.eval()(X).softmax(-1))
    torch.testing.assert_close(got, torch.stack(refs).mean(0), rtol=1e-5, atol=1e-6)
    return "torch.optim.swa_utils.update_bn per θ"


def cell_predict_dropout(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    seen = _spy(post, mp)
    model = make_model(dropout=True)
    acts: list[tuple[Tensor, Tensor]] = []
    model.drop.register_forward_hook(lambda m, i, o: acts.append((i[0].detach(), o.detach())))
    got = swag.predict(
        post,
        model,
        [X],
        num_samples=4,
        generator=torch.Generator().manual_seed(3),
        options=swag.PredictOptions(mc_dropout=True),
    )
    assert len(acts) == len(seen) == 4
    for before, after in acts:  # a real mask: each unit dropped (0) or kept and scaled 1/(1-p)
        kept = after != 0
        torch.testing.assert_close(after[kept], before[kept] / 0.7, rtol=1e-6, atol=1e-7)
        assert 0 < int(kept.sum()) < kept.numel()
    ref = torch.stack([_forward64(t, X, h) for t, (_, h) in zip(seen, acts, strict=True)])
    torch.testing.assert_close(got.double(), ref.mean(0), rtol=1e-5, atol=1e-6)
    return "float64 head on the dropped-out activations"


def cell_fit_scale(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    model, data = make_model(), [(X, Y)]

    def nll(scale: float) -> float:
        probs = swag.predict(post, model, data, num_samples=4, scale=scale,
                             generator=torch.Generator().manual_seed(5))  # fmt: skip
        return swag.metrics.nll(probs, Y)

    with warnings.catch_warnings():  # the optimum of 12 examples may sit at a bound
        warnings.filterwarnings("ignore", "fit_scale: the fitted scale", RuntimeWarning)
        fitted = swag.fit_scale(post, model, data, num_samples=4, tol=0.2,
                                generator=torch.Generator().manual_seed(5))  # fmt: skip
    grid = [math.exp(u) for u in torch.linspace(math.log(1e-2), math.log(4.0), 9).tolist()]
    # golden section stops with a bracket 0.2 wide in log(scale): within it the NLL of these
    # 12 examples moves by < 1e-3 (measured: 5e-5 at the lower bound), so it must be at
    # least as good as the best of the grid up to that
    assert nll(fitted) <= min(nll(s) for s in grid) + 1e-3
    return "brute-force grid of 9 scales"


def cell_member(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    mix = swag.MultiSWAG([post, post])
    got = mix.sample((4,), generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    ref = torch.cat([post.sample((2,), generator=g), post.sample((2,), generator=g)])
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    return "the member's own draws, in order"


def cell_save_load(post: swag.Posterior, mp: pytest.MonkeyPatch, tmp: Path) -> str:
    swag.save(post, tmp / "p.safetensors")
    back = swag.load(tmp / "p.safetensors")
    assert type(back) is type(post)
    for name, t in post.to_state()[0].items():
        assert torch.equal(back.to_state()[0][name], t), name  # type: ignore[attr-defined]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(back.sample((3,), generator=g1), post.sample((3,), generator=g2),
                               rtol=0, atol=0)  # fmt: skip
    return "equal tensors and draws"


def cell_to(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    wide = post.to(dtype=torch.float64)
    assert type(wide) is type(post) and wide.mean.dtype == torch.float64
    back = wide.to(dtype=torch.float32)
    torch.testing.assert_close(back.mean, post.mean, rtol=0, atol=0)  # float32 → 64 → 32 exact
    return "exact float32 → float64 → float32"


def cell_plane(post: swag.Posterior, mp: pytest.MonkeyPatch) -> str:
    p = post.layout.size
    g = torch.Generator().manual_seed(8)
    plane = Plane(post.mean, torch.randn(p, generator=g), torch.randn(p, generator=g))
    centre, cov = plane.gaussian(post)  # type: ignore[arg-type]
    assert isinstance(post, swag.SWAGPosterior)
    dist = post.to_distribution()  # the dense covariance, projected by least squares
    e = torch.stack([plane.u, plane.v]).double()
    a = torch.linalg.pinv(e.T)
    ref = a @ dist.covariance_matrix.double() @ a.T
    torch.testing.assert_close(cov, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(centre, torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    return "dense covariance projected (pinv)"


CALLBACKS = "callbacks' posterior()"
# What a callback produces for a row, and how: (Lightning's, HF's) → the same of a plain
# Collector fed the same iterates (tests/callback_runs.py); bit for bit, as both run the same
# collect on the same parameters.
PRODUCED: dict[str, Callable[[Any], swag.Posterior]] = {
    "SWAG": lambda cb: cb.posterior(),
    "SWAG-Diag": lambda cb: cb.posterior().diagonal(),
    "point": lambda cb: swag.PointPosterior.from_model(cb.swa_model()),
}
REFERENCE: dict[str, Callable[[swag.Collector], swag.Posterior]] = {
    "SWAG": lambda c: c.posterior(),
    "SWAG-Diag": lambda c: c.posterior().diagonal(),
    "point": lambda c: swag.PointPosterior(c.mean, c.layout),
}
# Rows no callback produces, and what builds them from what callbacks do produce.
NOT_PRODUCED = {
    "MultiSWAG of SWAG": "swag.MultiSWAG of several runs' posterior()",
    "MultiSWAG of FGE points": "swag.Snapshots in your loop",
    "MultiSWAG of SWAG + subspace": "swag.MultiSWAG of posterior() and a subspace posterior",
    "subspace (ESS)": "swag.subspace.Subspace.pca(callback.collector)",
    "subspace (VI)": "swag.subspace.Subspace.pca(callback.collector)",
}


@functools.cache
def _callback_runs() -> tuple[Any, Any]:
    """One Lightning and one HF run (max_rank 3), shared by the column's cells."""
    return callback_runs.lightning_run(), callback_runs.transformers_run()


def cell_callbacks(row: str) -> str:
    if row in NOT_PRODUCED:
        return f"not produced by a callback (use {NOT_PRODUCED[row]})"
    pytest.importorskip("lightning", reason="lightning is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    for run in _callback_runs():
        plain = callback_runs.reference(run)
        assert plain.n == run.callback.collector.n >= 2
        got, ref = PRODUCED[row](run.callback), REFERENCE[row](plain)
        assert type(got) is type(ref) and got.layout == ref.layout
        for name, t in ref.to_state()[0].items():
            assert torch.equal(got.to_state()[0][name], t), name
        assert got.to_state()[1] == ref.to_state()[1]
    how = {"point": "swa_model()", "SWAG-Diag": "posterior().diagonal()"}.get(row, "posterior()")
    return (
        f"✓ `{how}` of the Lightning and HF callbacks = a plain Collector's over the same "
        "iterates, bit for bit"
    )


COLUMNS: dict[str, Callable[..., str]] = {
    "predict": cell_predict,
    "predict + BN refresh": cell_predict_bn,
    "predict + MC dropout": cell_predict_dropout,
    "fit_scale": cell_fit_scale,
    "MultiSWAG member": cell_member,
    "save / load": cell_save_load,
    "to(dtype)": cell_to,
    "Plane.gaussian": cell_plane,
    CALLBACKS: cell_callbacks,
}

# Cells refused on purpose, with the words their error must contain (what to use instead).
REFUSED: dict[tuple[str, str], tuple[type[Exception], str]] = {
    **{
        (row, "fit_scale"): (ValueError, "swag.fit_temperature")
        for row in ("point", "MultiSWAG of FGE points", "subspace (ESS)", "subspace (VI)")
    },
    **{
        (row, "Plane.gaussian"): (TypeError, "each of .components")
        for row in ROWS
        if row not in ("SWAG", "SWAG-Diag")
    },
    ("sharded (one rank's part)", "MultiSWAG member"): (ValueError, ".full()"),
    ("sharded (one rank's part)", "save / load"): (TypeError, "swag.distributed.save"),
}
# Cells that need a process group, so not in this process: each is checked against the same
# consumer on the unsharded posterior (whose cell above has its own reference) at world sizes
# 2 and 3 under gloo, in tests/test_distributed.py.
SHARDED = "sharded (one rank's part)"
ELSEWHERE = {
    (SHARDED, c): "✓ = the unsharded posterior at W = 2, 3 (tests/test_distributed.py)"
    for c in ("predict", "predict + BN refresh", "predict + MC dropout", "fit_scale")
} | {
    (SHARDED, CALLBACKS): "✓ Lightning `shard=True` under DDP at W = 2: `sharded_posterior()` "
    "assembled = the replicated run's posterior(), bit for bit "
    "(tests/test_integrations_lightning.py)"
}


def _cell(row: str, col: str, mp: pytest.MonkeyPatch, tmp: Path) -> str:
    if (row, col) in ELSEWHERE:
        return ELSEWHERE[(row, col)]
    if col == CALLBACKS:
        return cell_callbacks(row)
    post = ROWS[row]()
    fn = COLUMNS[col]
    args = (post, mp, tmp) if col == "save / load" else (post, mp)
    if (row, col) in REFUSED:
        error, words = REFUSED[(row, col)]
        with pytest.raises(error, match=re.escape(words)):
            fn(*args)
        return f"refused: {error.__name__} naming `{words}`"
    return "✓ " + fn(*args)


@pytest.mark.parametrize("col", list(COLUMNS))
@pytest.mark.parametrize("row", list(ROWS))
def test_cell(row: str, col: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _cell(row, col, monkeypatch, tmp_path)


def table(mp: pytest.MonkeyPatch, tmp: Path) -> str:
    lines = ["| kind | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in ROWS:
        cells = []
        for col in COLUMNS:
            with pytest.MonkeyPatch.context() as cell_mp:
                cells.append(_cell(row, col, cell_mp, tmp))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_docs_table_is_this_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOCS.read_text()
    new = f"{BEGIN}\n{table(monkeypatch, tmp_path)}\n{END}"
    if os.environ.get("SWAG_WRITE_DOCS") == "1":
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + new + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
        DOCS.write_text(text)
    assert new in DOCS.read_text(), "docs/guarantees.md is stale: rerun with SWAG_WRITE_DOCS=1"


def test_net_matches_the_float64_reference_forward() -> None:
    net = make_model()
    theta = swag.PointPosterior.from_model(net).mean
    assert isinstance(net, Net)
    with torch.no_grad():
        torch.testing.assert_close(_forward64(theta, X), net(X).softmax(-1).double(), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
