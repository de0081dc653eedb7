"""Energy, max logit, OOD summary and classwise ECE against numpy/scipy/sklearn loops, and the
bin convention against torchmetrics'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from swag.metrics import classwise_ece, ece, energy, max_logit, ood_summary


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_energy_matches_scipy(temperature: float) -> None:
    z = torch.randn(3, 40, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zn = z.numpy()
    expected = -temperature * logsumexp(zn / temperature, axis=-1)
    np.testing.assert_allclose(energy(z[0], temperature).numpy(), expected[0], rtol=0, atol=1e-12)
    # per-sample logits: the mean of the per-sample energies
    np.testing.assert_allclose(
        energy(z, temperature=temperature).numpy(), expected.mean(0), rtol=0, atol=1e-12
    )


def test_energy_is_large_far_from_the_data_and_float32_is_computed_in_float64() -> None:
    confident = torch.tensor([[30.0, 0.0, 0.0]])
    flat = torch.zeros(1, 3)
    assert energy(flat).item() > energy(confident).item()
    assert energy(flat).dtype == torch.float64
    assert energy(flat).item() == pytest.approx(-np.log(3.0), abs=1e-12)


def test_max_logit_matches_numpy() -> None:
    z = torch.randn(4, 30, 5, generator=torch.Generator().manual_seed(1))
    zn = z.double().numpy()
    np.testing.assert_allclose(max_logit(z[1]).numpy(), zn[1].max(-1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(max_logit(z).numpy(), zn.max(-1).mean(0), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: energy([[1.0]]), TypeError, "logits must be a torch.Tensor"),  # type: ignore[arg-type]
        (lambda: energy(torch.zeros(3)), ValueError, r"\(N, C\) or \(S, N, C\)"),
        (lambda: energy(torch.zeros(2, 3), temperature=0.0), ValueError, "temperature"),
        (lambda: energy(torch.zeros(2, 3), temperature=True), ValueError, "temperature"),
        (lambda: max_logit(torch.zeros(2, 3, dtype=torch.long)), TypeError, "floating-point"),
        (lambda: max_logit(torch.tensor([[0.0, float("nan")]])), ValueError, "NaN"),
    ],
)
def test_invalid_logits(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_ood_summary_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(2)
    s_in, s_out = torch.randn(300, generator=g), torch.randn(150, generator=g) + 1.0
    labels = np.r_[np.zeros(300), np.ones(150)]
    scores = np.r_[s_in.double().numpy(), s_out.double().numpy()]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out = ood_summary(scores_in=s_in, scores_out=s_out)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["aupr_out"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert out["aupr_in"] == pytest.approx(average_precision_score(1 - labels, -scores), abs=1e-12)
    assert out["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def naive_classwise_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    n, c = p.shape
    total = 0.0
    for k in range(c):
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            members = [i for i in range(n) if (lo < p[i, k] <= hi) or (b == 0 and p[i, k] == 0)]
            if members:
                conf = np.mean([p[i, k] for i in members])
                freq = np.mean([float(y[i] == k) for i in members])
                total += len(members) / n * abs(freq - conf)
    return total / c


@pytest.mark.parametrize(("n", "c", "n_bins"), [(1, 2, 1), (60, 3, 5), (300, 10, 15)])
def test_classwise_ece_matches_naive_loops(n: int, c: int, n_bins: int) -> None:
    g = torch.Generator().manual_seed(n + c)
    z = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    probs = torch.softmax(z, 1)
    probs[0] = torch.nn.functional.one_hot(torch.tensor(0), c)  # exact 0 and 1 entries
    targets = torch.randint(0, c, (n,), generator=g)
    expected = naive_classwise_ece(probs.numpy(), targets.numpy(), n_bins)
    assert classwise_ece(probs, targets, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_is_zero_for_one_hot_correct_predictions() -> None:
    targets = torch.tensor([0, 2, 1, 2])
    probs = torch.nn.functional.one_hot(targets, 3).double()
    assert classwise_ece(probs, targets) == 0.0
    assert classwise_ece(probs, torch.tensor([1, 2, 1, 2])) == pytest.approx(2 / 12, abs=1e-15)


def test_bins_differ_from_torchmetrics_on_edges_and_at_one() -> None:
    # torchmetrics forms n_bins + 1 bins [b/M, (b+1)/M) plus {1.0}; ours are (b/M, (b+1)/M].
    tm = pytest.importorskip("torchmetrics.functional.classification")
    # A wrong prediction with confidence exactly 1 and a right one at 0.8, 4 bins: we pool them
    # in (0.75, 1] (|1 - 1.8| / 2 = 0.4), torchmetrics keeps 1.0 apart ((1 + 0.2) / 2 = 0.6).
    probs = torch.tensor([[1.0, 0.0], [0.8, 0.2]], dtype=torch.float64)
    targets = torch.tensor([1, 0])
    assert ece(probs, targets, n_bins=4) == pytest.approx(0.4, abs=1e-15)
    theirs = tm.multiclass_calibration_error(probs, targets, 2, n_bins=4, norm="l1").item()
    assert theirs == pytest.approx(0.6, abs=1e-6)  # torchmetrics returns float32
    # A confidence on the edge 0.5 goes below it for us, above it for torchmetrics.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.4, 0.3, 0.3]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    assert ece(probs, targets, n_bins=4) == pytest.approx(0.05, abs=1e-15)
    theirs = tm.multiclass_calibration_error(probs, targets, 3, n_bins=4, norm="l1").item()
    assert theirs == pytest.approx(0.45, abs=1e-6)
