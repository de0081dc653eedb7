"""Split conformal prediction: brute-force set construction, empirical coverage over random
splits, and MAPIE values recorded as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from swag.conformal import SplitConformal, SplitConformalRegression, conformal_quantile


def make_data(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchangeable pairs from an overconfident model: labels ~ softmax(z), probs softmax(2 z)."""
    g = torch.Generator().manual_seed(seed)
    z = 1.2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return torch.softmax(2.0 * z, 1), y


def brute_score(p: np.ndarray, label: int, method: str, u: float, lam: float, k_reg: int) -> float:
    """Score of one label by explicit loops over the classes ranked by probability."""
    if method == "lac":
        return 1.0 - p[label]
    ranked = sorted(range(len(p)), key=lambda j: (-p[j], j))
    rank = ranked.index(label) + 1
    above = sum(p[j] for j in ranked[: rank - 1])
    score = above + u * p[label]
    if method == "raps":
        score += lam * max(0, rank - k_reg)
    return score


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_sets_match_brute_force(method: str) -> None:
    probs, y = make_data(300, 6, seed=1)
    cal, test = slice(0, 200), slice(200, 300)
    cp = SplitConformal(method, alpha=0.2, penalty=0.05, k_reg=2).fit(probs[cal], y[cal])
    p, yy = probs.numpy(), y.numpy()
    cal_scores = sorted(brute_score(p[i], int(yy[i]), method, 1.0, 0.05, 2) for i in range(200))
    q = cal_scores[math.ceil(201 * 0.8) - 1]
    assert cp.quantile_ == pytest.approx(q, abs=1e-12)
    sets = cp.predict_sets(probs[test])
    assert sets.dtype == torch.bool and sets.shape == (100, 6)
    expected = [
        [brute_score(p[i], c, method, 1.0, 0.05, 2) <= q + 1e-12 for c in range(6)]
        for i in range(200, 300)
    ]
    assert sets.tolist() == expected


def test_randomized_aps_uses_the_generator() -> None:
    probs, y = make_data(400, 5, seed=2)
    cp = SplitConformal("aps", alpha=0.1, randomized=True)
    cp.fit(probs[:200], y[:200], generator=torch.Generator().manual_seed(0))
    a = cp.predict_sets(probs[200:], generator=torch.Generator().manual_seed(3))
    b = cp.predict_sets(probs[200:], generator=torch.Generator().manual_seed(3))
    c = cp.predict_sets(probs[200:], generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("lac", {}), ("aps", {}), ("aps", {"randomized": True}), ("raps", {"randomized": True})],
)
def test_marginal_coverage_over_random_splits(method: str, kwargs: dict[str, bool]) -> None:
    # E[coverage] >= 1 - alpha over calibration and test draws; 100 random 300/700 splits.
    alpha, n_cal, reps = 0.1, 300, 100
    probs, y = make_data(1000, 10, seed=5)
    g = torch.Generator().manual_seed(11)
    coverages = []
    for _ in range(reps):
        perm = torch.randperm(1000, generator=g)
        cal, test = perm[:n_cal], perm[n_cal:]
        cp = SplitConformal(method, alpha=alpha, **kwargs).fit(probs[cal], y[cal], generator=g)
        sets = cp.predict_sets(probs[test], generator=g)
        coverages.append(sets[torch.arange(len(test)), y[test]].double().mean().item())
    cov = np.array(coverages)
    se = cov.std(ddof=1) / math.sqrt(reps)
    assert cov.mean() >= 1 - alpha - 2 * se
    # and not trivially: at most 1 - alpha + 1 / (n_cal + 1) above, up to noise
    assert cov.mean() <= 1 - alpha + 1 / (n_cal + 1) + 3 * se


# Oracle values recorded from MAPIE 1.6.0 (a throwaway venv, `pip install mapie`; not a test
# dependency): SplitConformalClassifier(estimator=<predict_proba returns its input>,
# confidence_level=0.8, conformity_score="lac", prefit=True).conformalize(p[:200], y[:200]), then
# predict_set(p[200:]) on make_data(300, 6, seed=1); quantile from conformity_score_function_.
MAPIE_LAC_QUANTILE = 0.9044198649597587
MAPIE_LAC_SET_SIZES_FIRST_20 = [1, 3, 4, 1, 2, 3, 4, 1, 3, 2, 4, 3, 3, 2, 2, 1, 2, 2, 2, 2]
MAPIE_LAC_TOTAL_SIZE = 215


def test_lac_matches_recorded_mapie_values() -> None:
    probs, y = make_data(300, 6, seed=1)
    cp = SplitConformal("lac", alpha=0.2).fit(probs[:200], y[:200])
    sets = cp.predict_sets(probs[200:])
    assert cp.quantile_ == pytest.approx(MAPIE_LAC_QUANTILE, abs=1e-12)
    assert sets.sum(1).tolist()[:20] == MAPIE_LAC_SET_SIZES_FIRST_20
    assert int(sets.sum()) == MAPIE_LAC_TOTAL_SIZE


def test_quantile_is_the_finite_sample_order_statistic() -> None:
    scores = torch.arange(1.0, 10.0, dtype=torch.float64)  # n = 9
    assert conformal_quantile(scores, 0.1) == 9.0  # ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.5) == 5.0
    assert conformal_quantile(scores, 0.05) == math.inf  # ceil(10 * 0.95) = 10 > 9


@pytest.mark.parametrize("method", ["absolute", "normalized"])
def test_regression_coverage_and_adaptivity(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, generator=g, dtype=torch.float64)
    std = 0.1 + x  # heteroscedastic noise the posterior knows about
    target = torch.sin(3 * x) + std * torch.randn(4000, generator=g, dtype=torch.float64)
    mean = torch.sin(3 * x)
    reg = SplitConformalRegression(method, alpha=0.1)
    kw = {"std": std} if method == "normalized" else {}
    covs, narrow, wide = [], [], []
    for _ in range(100):
        perm = torch.randperm(4000, generator=g)
        cal, test = perm[:1000], perm[1000:]
        reg.fit(mean[cal], target[cal], **{k: v[cal] for k, v in kw.items()})
        lo, hi = reg.predict_intervals(mean[test], **{k: v[test] for k, v in kw.items()})
        covs.append(((lo <= target[test]) & (target[test] <= hi)).double().mean().item())
        narrow.append((hi - lo)[x[test] < 0.2].mean().item())
        wide.append((hi - lo)[x[test] > 0.8].mean().item())
    cov = np.array(covs)
    assert cov.mean() >= 0.9 - 2 * cov.std(ddof=1) / 10
    assert cov.mean() <= 0.9 + 1 / 1001 + 3 * cov.std(ddof=1) / 10
    if method == "normalized":  # narrower where the noise is small (std 0.1-0.3 vs 0.9-1.1)
        assert np.mean(narrow) < 0.3 * np.mean(wide)
    else:
        assert np.mean(narrow) == pytest.approx(np.mean(wide), rel=1e-9)


def test_regression_normalized_equals_brute_force_quantile() -> None:
    mean = torch.zeros(9, dtype=torch.float64)
    target = torch.arange(1.0, 10.0, dtype=torch.float64)
    std = torch.full((9,), 2.0, dtype=torch.float64)
    reg = SplitConformalRegression("normalized", alpha=0.5).fit(mean, target, std)
    assert reg.quantile_ == 2.5  # 5th smallest of |y| / 2
    lo, hi = reg.predict_intervals(torch.tensor([1.0]), torch.tensor([4.0]))
    assert (lo.item(), hi.item()) == (-9.0, 11.0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: SplitConformal("thr"), ValueError, "method must be one of"),
        (lambda: SplitConformal("lac", alpha=1.0), ValueError, "alpha"),
        (lambda: SplitConformal("raps", penalty=-1.0), ValueError, "penalty"),
        (lambda: SplitConformal("raps", k_reg=1.5), ValueError, "k_reg"),  # type: ignore[arg-type]
        (lambda: SplitConformal("lac", randomized=True), ValueError, "randomized"),
        (
            lambda: SplitConformal("lac").predict_sets(torch.eye(2)),
            RuntimeError,
            "not fitted",
        ),
        (
            lambda: SplitConformal("lac").fit(torch.eye(2) * 3, torch.tensor([0, 1])),
            ValueError,
            "probs must lie in",
        ),
        (lambda: SplitConformalRegression("quantile"), ValueError, "method must be"),
        (
            lambda: SplitConformalRegression("normalized").fit(torch.zeros(3), torch.zeros(3)),
            ValueError,
            "needs std",
        ),
        (
            lambda: SplitConformalRegression("normalized").fit(
                torch.zeros(3), torch.zeros(3), torch.zeros(3)
            ),
            ValueError,
            "std must be > 0",
        ),
        (
            lambda: SplitConformalRegression().fit(torch.zeros(3), torch.zeros(2)),
            ValueError,
            "mean must have shape",
        ),
    ],
)
def test_invalid_arguments(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
