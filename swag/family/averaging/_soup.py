"""Greedy model soups (Wortsman et al. 2022): average members while validation does not drop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from swag.core._checks import check_reiterable
from swag.core.multiswag import MultiSWAG
from swag.core.point import PointPosterior
from swag.core.posterior import Posterior
from swag.evaluation.bn import update_bn

__all__ = ["greedy_soup"]


def greedy_soup(
    members: MultiSWAG | Sequence[Posterior],
    model: nn.Module,
    score: Callable[[nn.Module], float],
    *,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = None,
) -> tuple[PointPosterior, list[int]]:
    """The greedy soup of ``members``' means, and the indices of the members it kept.

    Members are ranked by their own ``score`` (higher is better, e.g. validation accuracy or
    minus the NLL); the best starts the soup, and each next one is kept only if the equal
    average of the soup with it scores at least as well as the soup without it. With
    ``bn_loader``, BatchNorm statistics are refreshed (:func:`swag.update_bn`) for every
    candidate before it is scored, since an average of weights needs its own statistics.
    ``model`` is overwritten with each candidate and left holding the soup.

    Args:
        members: a :class:`~swag.MultiSWAG` (of points, SWAG posteriors: their means are
            used), or a sequence of such posteriors, all with the same layout.
        model: a network the members' layout fits.
        score: ``model -> float``, higher is better; called once per member and candidate.
        bn_loader: batches for the BN refresh (``None``: no refresh).
        bn_batches: refresh on at most this many batches.

    Returns:
        ``(soup, kept)``: the soup as a :class:`~swag.PointPosterior`, and the indices into
        ``members`` it averages, in the order they were added.

    Raises:
        TypeError: if a member has no mean (a mixture inside the mixture), or ``bn_loader``
            is a one-shot iterator.
        ValueError: if there are no members, or their layouts differ.
    """
    if bn_loader is not None:
        check_reiterable(bn_loader, "bn_loader")  # walked once per member and candidate
    comps = list(members.components if isinstance(members, MultiSWAG) else members)
    if not comps:
        raise ValueError("members must hold at least one posterior, got none")
    means = []
    for i, c in enumerate(comps):
        mean = getattr(c, "mean", None)
        if not isinstance(mean, torch.Tensor):
            raise TypeError(f"members[{i}] ({type(c).__name__}) has no mean to average")
        diff = comps[0].layout.mismatch(c.layout, this="members[0]", that=f"members[{i}]")
        if diff:
            raise ValueError(f"members' layouts differ: {diff}")
        means.append(mean)
    layout = comps[0].layout

    def evaluate(theta: torch.Tensor) -> float:
        layout.scatter(theta, model)
        if bn_loader is not None:
            update_bn(bn_loader, model, num_batches=bn_batches)
        return float(score(model))

    alone = [evaluate(m) for m in means]
    order = sorted(range(len(means)), key=lambda i: -alone[i])
    kept = [order[0]]
    total = means[order[0]].double().clone()
    best = alone[order[0]]
    for i in order[1:]:
        candidate = (total + means[i]) / (len(kept) + 1)
        value = evaluate(candidate.to(means[0].dtype))
        if value >= best:
            kept.append(i)
            total += means[i]
            best = value
    soup = (total / len(kept)).to(means[0].dtype)
    layout.scatter(soup, model)
    if bn_loader is not None:
        update_bn(bn_loader, model, num_batches=bn_batches)
    return PointPosterior(soup, layout), kept
