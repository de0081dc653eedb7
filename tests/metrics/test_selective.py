"""Selective-prediction metrics against brute-force numpy loops and scikit-learn's AUROC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from swag.metrics import augrc, aurc, risk_coverage_curve, selective_accuracy


def make_problem(n: int, c: int, seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, c, generator=g, dtype=torch.float64)
    if ties:  # few distinct logit values: many rows share a confidence
        z = z.round()
    targets = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return torch.softmax(2.0 * z, 1), targets


def brute_curve(kappa: np.ndarray, error: np.ndarray) -> list[tuple[float, float, float]]:
    """(coverage, risk, generalized risk) accepting kappa >= t, per distinct t descending."""
    n = len(kappa)
    rows = []
    for t in sorted(set(kappa.tolist()), reverse=True):
        accepted = kappa >= t
        k = int(accepted.sum())
        e = float(error[accepted].sum())
        rows.append((k / n, e / k, e / n))
    return rows


def conf_and_error(probs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p, y = probs.numpy(), targets.numpy()
    return p.max(1), (p.argmax(1) != y).astype(np.float64)


CASES = [(1, 3, False), (50, 4, False), (400, 10, False), (300, 3, True), (60, 2, True)]


@pytest.mark.parametrize(("n", "c", "ties"), CASES)
def test_curve_and_aurc_match_brute_force(n: int, c: int, ties: bool) -> None:
    probs, targets = make_problem(n, c, seed=n + c, ties=ties)
    kappa, error = conf_and_error(probs, targets)
    rows = brute_curve(kappa, error)
    curve = risk_coverage_curve(probs, targets)
    expected = torch.tensor(rows, dtype=torch.float64)
    torch.testing.assert_close(curve.coverage, expected[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(curve.risk, expected[:, 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(curve.generalized_risk, expected[:, 2], rtol=0, atol=1e-12)
    area, prev = 0.0, 0.0
    for cov, risk, _ in rows:
        area, prev = area + (cov - prev) * risk, cov
    assert aurc(probs, targets) == pytest.approx(area, abs=1e-12)


def test_aurc_without_ties_is_the_mean_selective_risk() -> None:
    probs, targets = make_problem(300, 5, seed=3, ties=False)
    kappa, error = conf_and_error(probs, targets)
    assert len(set(kappa.tolist())) == len(kappa)
    sorted_error = error[np.argsort(-kappa)]
    risks = np.cumsum(sorted_error) / np.arange(1, len(kappa) + 1)
    assert aurc(probs, targets) == pytest.approx(risks.mean(), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "ties"), CASES[1:])
def test_augrc_matches_closed_form_with_sklearn_auroc(n: int, c: int, ties: bool) -> None:
    # Traub et al. (2024): AUGRC = (1 - acc) acc (1 - AUROC_f) + (1 - acc)^2 / 2.
    probs, targets = make_problem(n, c, seed=2 * n + c, ties=ties)
    kappa, error = conf_and_error(probs, targets)
    acc = 1.0 - error.mean()
    auroc_f = roc_auc_score(error, -kappa)
    expected = (1 - acc) * acc * (1 - auroc_f) + (1 - acc) ** 2 / 2
    assert augrc(probs, targets) == pytest.approx(expected, abs=1e-12)


def test_augrc_trapezoid_matches_brute_force() -> None:
    probs, targets = make_problem(200, 3, seed=9, ties=True)
    rows = [(0.0, 0.0, 0.0), *brute_curve(*conf_and_error(probs, targets))]
    area = sum((b[0] - a[0]) * (a[2] + b[2]) / 2 for a, b in itertools.pairwise(rows))
    assert augrc(probs, targets) == pytest.approx(area, abs=1e-12)


def test_perfect_ranking_and_constant_confidence() -> None:
    # Errors all least confident: risk 0 until the errors are accepted.
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1])
    assert aurc(probs, targets) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4, abs=1e-15)
    assert augrc(probs, targets) == pytest.approx(0.5**2 / 2, abs=1e-15)  # AUROC_f = 1
    flat = torch.full((4, 2), 0.5, dtype=torch.float64)
    # One tie group: a single point (1, error rate); AURC is the error rate.
    assert aurc(flat, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75, abs=1e-15)


def test_selective_accuracy_matches_sorting_without_ties() -> None:
    probs, targets = make_problem(500, 6, seed=4, ties=False)
    kappa, error = conf_and_error(probs, targets)
    order = np.argsort(-kappa)
    out = selective_accuracy(probs, targets, (0.1, 0.5, 0.93, 1.0))
    for c, value in out.items():
        k = math.ceil(c * len(kappa))
        assert value == pytest.approx(1.0 - error[order[:k]].mean(), abs=1e-12)


def test_selective_accuracy_averages_over_tie_breaking() -> None:
    # Confidences 0.9 (right), 0.6 x 4 (2 right), 0.55 (wrong). Coverage 0.5 takes 3 of 6:
    # the 0.9 one and 2 of the tied group, expected correct 1 + 2 * 0.5 = 2.
    rows = [[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.55, 0.45]]
    probs = torch.tensor(rows, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 0, 1])
    out = selective_accuracy(probs, targets, (0.5,))
    assert out[0.5] == pytest.approx(2 / 3, abs=1e-15)
    # brute force: mean over every order of the tied group
    rng = np.random.default_rng(0)
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=np.float64)  # argmax 0,0,0,1,1,0
    kappa = np.array([0.9, 0.6, 0.6, 0.6, 0.6, 0.55])
    accs = []
    for _ in range(2000):
        order = np.lexsort((rng.random(6), -kappa))
        accs.append(correct[order[:3]].mean())
    assert out[0.5] == pytest.approx(float(np.mean(accs)), abs=0.01)


def test_custom_confidence_changes_the_ranking() -> None:
    probs, targets = make_problem(100, 4, seed=1, ties=False)
    error = (probs.argmax(1) != targets).double()
    oracle = -error  # the errors rank last
    assert augrc(probs, targets, confidence=oracle) < augrc(probs, targets)
    acc = 1.0 - error.mean().item()
    assert augrc(probs, targets, confidence=oracle) == pytest.approx((1 - acc) ** 2 / 2, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"confidence": [0.1]}, TypeError, "confidence must be a torch.Tensor"),
        ({"confidence": torch.zeros(3)}, ValueError, r"confidence must have shape \(2,\)"),
        ({"confidence": torch.tensor([0.0, float("nan")])}, ValueError, "NaN"),
        ({"confidence": torch.tensor([True, False])}, TypeError, "real scores"),
    ],
)
def test_invalid_confidence(kwargs: dict[str, object], error: type, match: str) -> None:
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    with pytest.raises(error, match=match):
        aurc(probs, torch.tensor([0, 1]), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("coverages", "error"), [((0.0,), ValueError), ((1.5,), ValueError), (0.5, TypeError)]
)
def test_invalid_coverages(coverages: object, error: type) -> None:
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    with pytest.raises(error, match="coverages"):
        selective_accuracy(probs, torch.tensor([0, 1]), coverages)  # type: ignore[arg-type]
