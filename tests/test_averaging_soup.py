"""Greedy soup against a brute-force float64 greedy loop, with BN refreshed per candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import swag
from swag.averaging import greedy_soup


def _points(count: int, seed: int) -> tuple[nn.Module, list[swag.PointPosterior]]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    layout = swag.ParamLayout.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    means = [torch.randn(layout.size, generator=gen) for _ in range(count)]
    return model, [swag.PointPosterior(m, layout) for m in means]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_soup_matches_a_brute_force_greedy_loop(seed: int) -> None:
    model, members = _points(6, seed)
    target = torch.linspace(-0.5, 0.5, members[0].layout.size).double().numpy()

    def score(m: nn.Module) -> float:
        theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double().numpy()
        return -float(((theta - target) ** 2).sum())

    soup, kept = greedy_soup(swag.MultiSWAG(members), model, score)
    # the definition, in float64
    x = [p.mean.double().numpy() for p in members]
    f = [-float(((v - target) ** 2).sum()) for v in x]
    order = list(np.argsort(f)[::-1])
    ref, best = [order[0]], f[order[0]]
    for i in order[1:]:
        value = -float(((np.mean([x[j] for j in [*ref, i]], 0) - target) ** 2).sum())
        if value >= best:
            ref, best = [*ref, int(i)], value
    assert kept == ref and len(kept) > 1
    np.testing.assert_allclose(soup.mean.double(), np.mean([x[j] for j in ref], 0), atol=1e-6)


def test_bn_is_refreshed_for_every_candidate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    layout = swag.ParamLayout.from_model(model)
    members = [swag.PointPosterior.from_model(model)]
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    members.append(swag.PointPosterior.from_model(model))
    data = [torch.randn(16, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    seen: list[torch.Tensor] = []

    def score(m: nn.Module) -> float:
        seen.append(m[1].running_var.clone())  # type: ignore[index]
        return 0.0

    soup, kept = greedy_soup(members, model, score, bn_loader=data)
    assert len(seen) == 3 and kept == [0, 1]  # two members alone, one candidate
    expected = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    layout.scatter(soup.mean, expected)
    swag.update_bn(data, expected)
    torch.testing.assert_close(model[1].running_var, expected[1].running_var)  # type: ignore[index]
    assert not torch.equal(seen[0], seen[1])  # each member's own statistics


def test_bad_members_are_named() -> None:
    model, members = _points(2, 0)
    with pytest.raises(ValueError, match="at least one"):
        greedy_soup([], model, lambda m: 0.0)
    other = swag.PointPosterior.from_model(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layouts differ"):
        greedy_soup([members[0], other], model, lambda m: 0.0)
