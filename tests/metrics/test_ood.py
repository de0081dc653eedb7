"""OOD metrics against scikit-learn and naive pairwise counting, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from swag.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr


def make_scores(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "continuous":
        return torch.randn(300, generator=g), torch.randn(200, generator=g) + 1.0
    if kind == "ties":  # few distinct values: many ties within and across the two sets
        return (
            torch.randint(0, 5, (250,), generator=g).double(),
            torch.randint(2, 7, (120,), generator=g).double(),
        )
    if kind == "separated":
        return torch.rand(50, generator=g), torch.rand(80, generator=g) + 2.0
    if kind == "reversed":
        return torch.rand(50, generator=g) + 2.0, torch.rand(80, generator=g)
    if kind == "constant":
        return torch.zeros(30), torch.zeros(10)
    if kind == "single":
        return torch.tensor([0.3]), torch.tensor([0.7])
    raise AssertionError(kind)


KINDS = ["continuous", "ties", "separated", "reversed", "constant", "single"]


def sklearn_inputs(s_in: torch.Tensor, s_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """OOD as the positive class."""
    labels = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    return labels, np.concatenate([s_in.double().numpy(), s_out.double().numpy()])


def naive_auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    wins = sum(1.0 if o > i else 0.5 if o == i else 0.0 for o in s_out for i in s_in)
    return wins / (len(s_in) * len(s_out))


def naive_fpr(s_in: np.ndarray, s_out: np.ndarray, tpr: float) -> float:
    for t in sorted(set(s_in) | set(s_out), reverse=True):
        if np.sum(s_out >= t) / len(s_out) >= tpr:
            return float(np.sum(s_in >= t) / len(s_in))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", KINDS)
def test_auroc_matches_sklearn_and_pairwise_count(kind: str, device: torch.device) -> None:
    s_in, s_out = make_scores(kind, seed=1)
    labels, scores = sklearn_inputs(s_in, s_out)
    result = auroc(scores_in=s_in.to(device), scores_out=s_out.to(device))
    assert result == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result == pytest.approx(naive_auroc(s_in.numpy(), s_out.numpy()), abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_aupr_matches_sklearn(kind: str, device: torch.device) -> None:
    s_in, s_out = make_scores(kind, seed=2)
    labels, scores = sklearn_inputs(s_in, s_out)
    expected_out = average_precision_score(labels, scores)
    expected_in = average_precision_score(1 - labels, -scores)
    assert aupr_out(scores_in=s_in.to(device), scores_out=s_out.to(device)) == pytest.approx(
        expected_out, abs=1e-12
    )
    assert aupr_in(scores_in=s_in.to(device), scores_out=s_out.to(device)) == pytest.approx(
        expected_in, abs=1e-12
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
def test_fpr_at_tpr_matches_roc_curve(kind: str, tpr: float, device: torch.device) -> None:
    s_in, s_out = make_scores(kind, seed=3)
    labels, scores = sklearn_inputs(s_in, s_out)
    fpr, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = fpr[np.searchsorted(tprs, tpr, side="left")]
    result = fpr_at_tpr(scores_in=s_in.to(device), scores_out=s_out.to(device), tpr=tpr)
    assert result == expected
    assert result == naive_fpr(s_in.numpy(), s_out.numpy(), tpr)


def test_perfect_and_inverted_separation() -> None:
    s_in, s_out = make_scores("separated", seed=4)
    assert (
        auroc(scores_in=s_in, scores_out=s_out) == 1.0
        and aupr_in(scores_in=s_in, scores_out=s_out) == 1.0
        and aupr_out(scores_in=s_in, scores_out=s_out) == 1.0
    )
    assert fpr_at_tpr(scores_in=s_in, scores_out=s_out) == 0.0
    assert (
        auroc(scores_in=s_out, scores_out=s_in) == 0.0
        and fpr_at_tpr(scores_in=s_out, scores_out=s_in) == 1.0
    )


def test_constant_scores_are_chance() -> None:
    s_in, s_out = torch.zeros(30), torch.zeros(10)
    assert auroc(scores_in=s_in, scores_out=s_out) == 0.5
    assert aupr_out(scores_in=s_in, scores_out=s_out) == pytest.approx(10 / 40)
    assert aupr_in(scores_in=s_in, scores_out=s_out) == pytest.approx(30 / 40)
    assert fpr_at_tpr(scores_in=s_in, scores_out=s_out) == 1.0


def test_fpr95_counts_ties_at_the_threshold_as_flagged() -> None:
    # 20 OOD scores: the 19th largest is 1.0, shared with two of the four in-distribution scores.
    s_out = torch.cat([torch.full((18,), 5.0), torch.tensor([1.0, 0.0])])
    s_in = torch.tensor([1.0, 1.0, 0.5, -1.0])
    assert fpr_at_tpr(scores_in=s_in, scores_out=s_out, tpr=0.95) == 0.5


def test_integer_and_low_precision_scores() -> None:
    g = torch.Generator().manual_seed(5)
    s_in, s_out = (
        torch.randint(0, 10, (100,), generator=g),
        torch.randint(3, 13, (60,), generator=g),
    )
    expected = auroc(scores_in=s_in.double(), scores_out=s_out.double())
    assert auroc(scores_in=s_in, scores_out=s_out) == expected
    assert (
        auroc(scores_in=s_in.half(), scores_out=s_out.half()) == expected
    )  # small integers are exact in float16


def test_order_and_permutation_invariance() -> None:
    s_in, s_out = make_scores("ties", seed=6)
    g = torch.Generator().manual_seed(7)
    p_in, p_out = torch.randperm(len(s_in), generator=g), torch.randperm(len(s_out), generator=g)
    for fn in (auroc, aupr_in, aupr_out, fpr_at_tpr):
        permuted = fn(scores_in=s_in[p_in], scores_out=s_out[p_out])
        assert permuted == pytest.approx(fn(scores_in=s_in, scores_out=s_out), abs=1e-15)


def test_invalid_inputs() -> None:
    good = torch.rand(5)
    with pytest.raises(
        ValueError, match=r"scores_out must be a non-empty 1-D tensor, got shape \(0,\)"
    ):
        auroc(scores_in=good, scores_out=torch.empty(0))
    with pytest.raises(
        ValueError, match=r"scores_in must be a non-empty 1-D tensor, got shape \(5, 1\)"
    ):
        aupr_in(scores_in=good[:, None], scores_out=good)
    with pytest.raises(ValueError, match="scores_in contains NaN"):
        aupr_out(scores_in=torch.tensor([float("nan")]), scores_out=good)
    with pytest.raises(TypeError, match="real scores"):
        auroc(scores_in=good, scores_out=good > 0.5)
    for tpr in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"tpr must be in \(0, 1\], got {tpr}"):
            fpr_at_tpr(scores_in=good, scores_out=good, tpr=tpr)


@pytest.mark.parametrize("fn", [auroc, aupr_in, aupr_out, fpr_at_tpr])
def test_scores_are_keyword_only_so_they_cannot_be_swapped(fn: object) -> None:
    # issue 23: auroc(s_ood, s_in) used to return 1 - AUROC silently
    s_in, s_out = torch.tensor([0.1, 0.2]), torch.tensor([0.2, 0.9])
    with pytest.raises(TypeError, match="positional"):
        fn(s_out, s_in)  # type: ignore[operator]
    assert auroc(scores_out=s_out, scores_in=s_in) == auroc(scores_in=s_in, scores_out=s_out)
