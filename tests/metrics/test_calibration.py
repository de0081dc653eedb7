"""Classification metrics against scikit-learn, torchmetrics and naive float64 loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from swag.metrics import (
    PROB_FLOOR,
    accuracy,
    adaptive_ece,
    brier,
    ece,
    mce,
    nll,
    reliability_curve,
    summary,
)

SHAPES = [(1, 2), (7, 3), (500, 10), (2000, 2)]
BINS = [1, 3, 15, 40]


def make_problem(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An overconfident model: labels drawn from softmax(z), predictions softmax(2 z)."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, c, generator=g, dtype=torch.float64)
    targets = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return torch.softmax(2.0 * z, 1), targets


def naive_bins(
    probs: np.ndarray, targets: np.ndarray, n_bins: int
) -> list[tuple[int, float, float]]:
    """(count, mean confidence, accuracy) per bin (b/M, (b+1)/M], by explicit loops."""
    rows = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        conf_sum, correct_sum, count = 0.0, 0.0, 0
        for p, y in zip(probs, targets, strict=True):
            conf = float(p.max())
            if lo < conf <= hi:
                count += 1
                conf_sum += conf
                correct_sum += float(int(np.argmax(p)) == int(y))
        rows.append((count, conf_sum / max(count, 1), correct_sum / max(count, 1)))
    return rows


def naive_ece(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    n = len(targets)
    return sum(k / n * abs(acc - conf) for k, conf, acc in naive_bins(probs, targets, n_bins))


def naive_mce(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    return max(abs(acc - conf) for k, conf, acc in naive_bins(probs, targets, n_bins) if k > 0)


def naive_adaptive_ece(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    order = np.lexsort((correct, conf))  # by confidence, then incorrect before correct
    total = 0.0
    for chunk in np.array_split(order, n_bins):
        if len(chunk) > 0:
            total += len(chunk) / len(targets) * abs(correct[chunk].mean() - conf[chunk].mean())
    return total


@pytest.mark.parametrize(("n", "c"), SHAPES)
def test_accuracy_nll_brier_match_sklearn(n: int, c: int, device: torch.device) -> None:
    probs, targets = make_problem(n, c, seed=n + c)
    p, y = probs.numpy(), targets.numpy()
    probs, targets = probs.to(device), targets.to(device)
    assert accuracy(probs, targets) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-15)
    assert nll(probs, targets) == pytest.approx(log_loss(y, p, labels=list(range(c))), rel=1e-12)
    expected = brier_score_loss(y, p, labels=list(range(c)), scale_by_half=False)
    assert brier(probs, targets) == pytest.approx(expected, rel=1e-12)


def test_binary_brier_is_twice_sklearn_binary() -> None:
    probs, targets = make_problem(300, 2, seed=3)
    expected = brier_score_loss(targets.numpy(), probs[:, 1].numpy())
    assert brier(probs, targets) == pytest.approx(2.0 * expected, rel=1e-12)


@pytest.mark.parametrize(("n", "c"), SHAPES)
@pytest.mark.parametrize("n_bins", BINS)
def test_binned_metrics_match_naive_loops(
    n: int, c: int, n_bins: int, device: torch.device
) -> None:
    probs, targets = make_problem(n, c, seed=10 * n + c + n_bins)
    p, y = probs.numpy(), targets.numpy()
    probs, targets = probs.to(device), targets.to(device)
    assert ece(probs, targets, n_bins=n_bins) == pytest.approx(naive_ece(p, y, n_bins), abs=1e-12)
    assert mce(probs, targets, n_bins=n_bins) == pytest.approx(naive_mce(p, y, n_bins), abs=1e-12)
    expected = naive_adaptive_ece(p, y, n_bins)
    assert adaptive_ece(probs, targets, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c"), SHAPES)
@pytest.mark.parametrize("n_bins", BINS)
def test_ece_and_mce_match_torchmetrics(n: int, c: int, n_bins: int) -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    probs, targets = make_problem(n, c, seed=7 * n + c + n_bins)
    for norm, ours in (("l1", ece), ("max", mce)):
        ref = tm.multiclass_calibration_error(probs, targets, c, n_bins=n_bins, norm=norm)
        assert ours(probs, targets, n_bins=n_bins) == pytest.approx(ref.item(), abs=1e-6)


def test_reliability_curve_matches_naive_loops_and_marks_empty_bins() -> None:
    probs, targets = make_problem(50, 4, seed=5)
    curve = reliability_curve(probs, targets, n_bins=40)
    rows = naive_bins(probs.numpy(), targets.numpy(), 40)
    counts = [k for k, _, _ in rows]
    assert curve.counts.tolist() == counts
    assert 0 in counts  # 40 bins for 50 points: some are empty
    empty = curve.counts == 0
    assert torch.isnan(curve.confidence[empty]).all() and torch.isnan(curve.accuracy[empty]).all()
    full = ~empty
    naive_conf = torch.tensor([conf for _, conf, _ in rows], dtype=torch.float64)
    naive_acc = torch.tensor([acc for _, _, acc in rows], dtype=torch.float64)
    torch.testing.assert_close(curve.confidence[full], naive_conf[full], rtol=0, atol=1e-12)
    torch.testing.assert_close(curve.accuracy[full], naive_acc[full], rtol=0, atol=1e-12)
    assert curve.edges.tolist() == [b / 40 for b in range(41)]


def test_bins_are_closed_on_the_right() -> None:
    # Confidences exactly on an edge go to the bin below it; confidence 1 goes to the last bin.
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    curve = reliability_curve(probs, torch.tensor([0, 0, 1, 1]), n_bins=4)
    assert curve.counts.tolist() == [0, 1, 2, 1]
    assert curve.accuracy[1:].tolist() == [1.0, 0.5, 1.0]


def test_all_correct_one_hot_is_perfect() -> None:
    targets = torch.arange(6) % 3
    probs = torch.nn.functional.one_hot(targets, 3).to(torch.float32)
    result = summary(probs, targets)
    assert result == {
        "accuracy": 1.0,
        "nll": 0.0,
        "brier": 0.0,
        "ece": 0.0,
        "adaptive_ece": 0.0,
        "mce": 0.0,
    }


def test_all_correct_underconfident_gap() -> None:
    probs = torch.tensor([[0.7, 0.3]] * 10)
    targets = torch.zeros(10, dtype=torch.int64)
    for n_bins in (1, 15):
        assert ece(probs, targets, n_bins=n_bins) == pytest.approx(0.3, abs=1e-7)
        assert mce(probs, targets, n_bins=n_bins) == pytest.approx(0.3, abs=1e-7)
        assert adaptive_ece(probs, targets, n_bins=n_bins) == pytest.approx(0.3, abs=1e-7)


def test_single_bin_is_accuracy_minus_mean_confidence() -> None:
    probs, targets = make_problem(200, 5, seed=11)
    expected = abs(accuracy(probs, targets) - probs.max(1).values.mean().item())
    assert ece(probs, targets, n_bins=1) == pytest.approx(expected, abs=1e-12)
    assert adaptive_ece(probs, targets, n_bins=1) == pytest.approx(expected, abs=1e-12)


def test_argmax_ties_take_the_first_class() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.4, 0.6]])
    assert accuracy(probs, torch.tensor([1, 1])) == 0.5
    assert accuracy(probs, torch.tensor([0, 1])) == 1.0


def test_nll_clamps_zero_probability() -> None:
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert nll(probs, torch.tensor([1, 0])) == pytest.approx(-math.log(PROB_FLOOR) / 2, rel=1e-12)


def test_adaptive_ece_ignores_input_order_of_ties() -> None:
    g = torch.Generator().manual_seed(2)
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]]).repeat(9, 1)
    targets = torch.randint(0, 2, (18,), generator=g)
    reference = adaptive_ece(probs, targets, n_bins=4)
    for _ in range(5):
        perm = torch.randperm(18, generator=g)
        assert adaptive_ece(probs[perm], targets[perm], n_bins=4) == reference


def test_adaptive_ece_with_more_bins_than_points() -> None:
    probs, targets = make_problem(5, 3, seed=4)
    expected = naive_adaptive_ece(probs.numpy(), targets.numpy(), 12)
    assert adaptive_ece(probs, targets, n_bins=12) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_equal_float64_of_same_values(dtype: torch.dtype) -> None:
    # Rounded rows sum to 1 only within the dtype's epsilon; they are accepted, and every metric is
    # computed in float64 from the rounded values.
    probs, targets = make_problem(300, 4, seed=6)
    low = probs.to(dtype)
    p, y = low.to(torch.float64).numpy(), targets.numpy()
    result = summary(low, targets)
    p_target = p[np.arange(len(y)), y]
    assert result["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-15)
    assert result["nll"] == pytest.approx(-np.mean(np.log(np.maximum(p_target, 1e-12))), rel=1e-12)
    brier_loop = np.mean([np.sum((row - np.eye(4)[t]) ** 2) for row, t in zip(p, y, strict=True)])
    assert result["brier"] == pytest.approx(brier_loop, rel=1e-12)
    assert result["ece"] == pytest.approx(naive_ece(p, y, 15), abs=1e-12)


def test_summary_equals_individual_functions() -> None:
    probs, targets = make_problem(400, 6, seed=8)
    result = summary(probs, targets, n_bins=10)
    for name, fn in (("ece", ece), ("adaptive_ece", adaptive_ece), ("mce", mce)):
        assert result[name] == fn(probs, targets, n_bins=10)
    for name, fn2 in (("accuracy", accuracy), ("nll", nll), ("brier", brier)):
        assert result[name] == fn2(probs, targets)


@pytest.mark.parametrize(
    ("probs", "targets", "match"),
    [
        (torch.full((3, 2), 0.5), torch.tensor([0, 1]), r"shape \(3,\)"),
        (torch.full((4,), 0.25), torch.tensor([0]), r"shape \(N, C\)"),
        (torch.tensor([[0.6, 0.6]]), torch.tensor([0]), "sum to 1"),
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), r"\[0, 1\].*not logits"),
        (torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), "NaN"),
        (torch.full((2, 2), 0.5), torch.tensor([0, 2]), r"\[0, 1\] for 2 classes, got .*\[0, 2\]"),
        (torch.full((2, 2), 0.5), torch.tensor([0, -1]), r"got values in \[-1, 0\]"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.int64), "non-empty"),
    ],
)
def test_invalid_inputs_raise_value_error(
    probs: torch.Tensor, targets: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        summary(probs, targets)


def test_invalid_dtypes_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"targets.long\(\)"):
        accuracy(torch.full((2, 2), 0.5), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="floating-point"):
        accuracy(torch.ones(2, 1, dtype=torch.int64), torch.tensor([0, 0]))


@pytest.mark.parametrize("fn", [ece, adaptive_ece, mce, reliability_curve, summary])
@pytest.mark.parametrize(
    ("n_bins", "exc"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_n_bins(fn: object, n_bins: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=f"n_bins must be an integer >= 1, got .*{n_bins!r}") as err:
        fn(torch.full((2, 2), 0.5), torch.tensor([0, 1]), n_bins=n_bins)  # type: ignore[operator]
    assert type(err.value) is exc
