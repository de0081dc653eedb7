"""MultiSWAG: stratified allocation, mixture mean, validation, lazy draws, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from swag import Collector, SWAGPosterior
from swag.core.multiswag import MultiSWAG, iter_samples
from swag.core.point import PointPosterior
from swag.core.posterior import Posterior
from swag.persistence import _io
from tests.reference import random_walk


def net(seed: int, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))


def swag_run(seed: int, steps: int = 6, device: str | torch.device = "cpu") -> SWAGPosterior:
    model = net(seed).to(device)
    collector = Collector(model, max_rank=3)
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(steps):
        random_walk(model, 1, g, step_size=0.2)
        collector.collect()
    return collector.posterior()


def points(n: int) -> list[PointPosterior]:
    return [PointPosterior.from_model(net(seed)) for seed in range(n)]


@pytest.mark.parametrize(("num", "expected"), [(30, [10, 10, 10]), (0, [0, 0, 0]), (3, [1, 1, 1])])
def test_allocation_of_a_multiple_of_m_is_exact_and_draws_nothing(
    num: int, expected: list[int]
) -> None:
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert MultiSWAG(points(3)).allocation(num, generator=g) == expected
    assert torch.equal(g.get_state(), state), "no random choice when M divides S"


@pytest.mark.parametrize("num", [1, 2, 31, 32])
def test_allocation_gives_the_remainder_to_distinct_random_members(num: int) -> None:
    base, extra = divmod(num, 3)
    seen = set()
    for seed in range(20):
        counts = MultiSWAG(points(3)).allocation(num, generator=torch.Generator().manual_seed(seed))
        assert sum(counts) == num and sorted(counts) == [base] * (3 - extra) + [base + 1] * extra
        seen.add(tuple(counts))
    assert len(seen) == 3, "each choice of remainder members must occur (3 of them for 3 members)"


@pytest.mark.parametrize(("bad", "exc"), [(-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_allocation_rejects_bad_counts(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="num_samples must be an int >= 0") as err:
        MultiSWAG(points(2)).allocation(bad)  # type: ignore[arg-type]
    assert type(err.value) is exc


def owners(draws: Tensor, members: list[PointPosterior]) -> list[int]:
    """Which member each draw (a point posterior's mean) came from."""
    return [next(i for i, m in enumerate(members) if torch.equal(d, m.mean)) for d in draws]


def test_sample_order_follows_allocation_and_skips_empty_components() -> None:
    members = points(3)
    ensemble = MultiSWAG(members)
    for num in (31, 2, 1):
        g = torch.Generator().manual_seed(num)
        counts = ensemble.allocation(num, generator=torch.Generator().manual_seed(num))
        expected = [i for i, n in enumerate(counts) for _ in range(n)]
        assert owners(ensemble.sample((num,), generator=g), members) == expected
    grid = ensemble.sample((2, 3))
    assert grid.shape == (2, 3, members[0].layout.size)
    assert owners(grid.reshape(6, -1), members) == [0, 0, 1, 1, 2, 2]
    assert ensemble.sample((0,)).shape == (0, members[0].layout.size)
    assert ensemble.sample().shape == (members[0].layout.size,)


def test_sample_draws_each_component_in_turn_from_one_generator() -> None:
    comps = [swag_run(seed) for seed in range(3)]
    mix = MultiSWAG(comps)
    got = mix.diagonal().sample((7,), scale=0.3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    counts = mix.allocation(7, generator=g)  # the remainder's members are drawn first
    expected = torch.cat(
        [
            c.diagonal().sample((n,), scale=0.3, generator=g)
            for c, n in zip(comps, counts, strict=True)
        ]
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_identical_components_behave_like_the_component() -> None:
    post = swag_run(0)
    mix = MultiSWAG([post, post, post])
    torch.testing.assert_close(mix.mean, post.mean, rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    expected = torch.cat([post.sample((10,), generator=g) for _ in range(3)])
    torch.testing.assert_close(
        mix.sample((30,), generator=torch.Generator().manual_seed(1)), expected, rtol=0, atol=0
    )


def test_mean_is_the_average_of_component_means() -> None:
    comps = [swag_run(seed) for seed in range(3)]
    expected = np.mean([c.mean.double().numpy() for c in comps], axis=0)
    np.testing.assert_allclose(MultiSWAG(comps).mean.double().numpy(), expected, rtol=1e-6)


def test_iter_samples_is_lazy_and_in_allocation_order() -> None:
    comps: list[Posterior] = [swag_run(0), PointPosterior.from_model(net(7)), swag_run(2)]
    mix = MultiSWAG(comps)
    draws = iter_samples(mix, 5, scale=0.5, generator=torch.Generator().manual_seed(3))
    first = next(draws)  # nothing else drawn yet: a generator, O(P) at a time
    rest = list(draws)
    g = torch.Generator().manual_seed(3)
    counts = mix.allocation(5, generator=g)
    expected = [c.sample(generator=g) for c, n in zip(comps, counts, strict=True) for _ in range(n)]
    assert len(rest) == 4
    for got, want in zip([first, *rest], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nested_mixtures_allocate_recursively() -> None:
    members = points(3)
    nested = MultiSWAG([MultiSWAG(members[:2]), members[2]])
    assert owners(nested.sample((8,)), members) == [0, 0, 1, 1, 2, 2, 2, 2]  # exact: no choice
    for seed in range(10):  # 5 = 2·2 + 1: the nested mixture gets 2 or 3, split 1+1 or 1+2/2+1
        drawn = owners(nested.sample((5,), generator=torch.Generator().manual_seed(seed)), members)
        lazily = iter_samples(nested, 5, generator=torch.Generator().manual_seed(seed))
        assert owners(torch.stack(list(lazily)), members) == drawn
        assert drawn == sorted(drawn) and drawn.count(2) in (2, 3) and 0 in drawn and 1 in drawn


def test_components_must_share_layout_device_and_dtype() -> None:
    with pytest.raises(ValueError, match="at least one component"):
        MultiSWAG([])
    wide = PointPosterior.from_model(net(0, width=5))
    with pytest.raises(ValueError, match=r"component 1 covers different parameters.*0\.weight"):
        MultiSWAG([points(1)[0], wide])
    last_layer = PointPosterior.from_model(net(0), "2")
    with pytest.raises(ValueError, match="component 2 covers different parameters"):
        MultiSWAG([*points(2), last_layer])
    with pytest.raises(ValueError, match=r"component 1 is torch\.float64"):
        MultiSWAG([points(1)[0], points(1)[0].to(dtype=torch.float64)])


def assert_same(a: object, b: object) -> None:
    assert type(a) is type(b)
    if isinstance(a, MultiSWAG):
        assert isinstance(b, MultiSWAG) and len(a) == len(b)
        for x, y in zip(a.components, b.components, strict=True):
            assert_same(x, y)
    elif isinstance(a, SWAGPosterior):
        assert isinstance(b, SWAGPosterior) and a.n == b.n and a.layout == b.layout
        for name in ("mean", "std", "deviations"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    else:
        assert isinstance(a, PointPosterior) and isinstance(b, PointPosterior)
        assert a.layout == b.layout
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)


def test_save_load_round_trip_with_mixed_and_nested_components(tmp_path: Path) -> None:
    point = PointPosterior.from_model(net(9))
    mix = MultiSWAG([swag_run(0), point, MultiSWAG([swag_run(1), point])])
    path = tmp_path / "mix.safetensors"
    mix.save(path)
    loaded = MultiSWAG.load(path)
    assert_same(mix, loaded)
    kinds = json.loads(_io.load_file(path, "multiswag")[1]["components"])
    assert kinds == ["swag_posterior", "point_posterior", "multiswag"]
    torch.testing.assert_close(
        loaded.sample((4,), generator=torch.Generator().manual_seed(0)),
        mix.sample((4,), generator=torch.Generator().manual_seed(0)),
        rtol=0,
        atol=0,
    )


def test_deep_ensemble_is_a_mixture_of_points(tmp_path: Path) -> None:
    members = points(4)
    ensemble = MultiSWAG(members)
    expected = np.mean([m.mean.double().numpy() for m in members], axis=0)
    np.testing.assert_allclose(ensemble.mean.double().numpy(), expected, rtol=1e-6)
    ensemble.save(tmp_path / "ensemble.safetensors")
    assert_same(ensemble, MultiSWAG.load(tmp_path / "ensemble.safetensors"))
    # the same member twice shares memory, which safetensors refuses unless we copy
    twice = MultiSWAG([members[0], members[0]])
    twice.save(tmp_path / "twice.safetensors")
    assert_same(twice, MultiSWAG.load(tmp_path / "twice.safetensors"))


def test_load_rejects_unknown_kinds_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    point = points(1)[0]
    meta = {"components": json.dumps(["laplace"])}
    _io.save_file(path, "multiswag", {"c0.mean": point.mean}, meta)
    with pytest.raises(ValueError, match="component 0 is a 'laplace'"):
        MultiSWAG.load(path)
    meta = {"components": json.dumps(["point_posterior"]), "c0.layout": point.layout.to_json()}
    _io.save_file(path, "multiswag", {"c0.mean": point.mean[:3]}, meta)
    with pytest.raises(ValueError, match=r"\(component 0\): tensor 'mean' has shape \(3,\)"):
        MultiSWAG.load(path)
    point.save(path)
    with pytest.raises(ValueError, match="not a 'multiswag'"):
        MultiSWAG.load(path)


def test_save_rejects_foreign_components(tmp_path: Path) -> None:
    class Foreign(PointPosterior):
        pass

    mix = MultiSWAG([points(1)[0], Foreign(points(1)[0].mean, points(1)[0].layout)])
    mix.save(tmp_path / "ok.safetensors")  # a subclass of a known kind is saved as that kind

    class Bare:
        layout = points(1)[0].layout
        mean = points(1)[0].mean
        sample = PointPosterior.sample
        apply_ = PointPosterior.apply_

    with pytest.raises(TypeError, match=r"component 1 must be a swag\.Posterior, got Bare"):
        MultiSWAG([points(1)[0], Bare()])  # type: ignore[list-item]
