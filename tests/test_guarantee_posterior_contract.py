"""The one posterior contract (issue 19): an abstract base every kind derives from, checks
common to all kinds made once, explicit diagonal views, and the one generator device rule."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

import swag
from swag.core import _random
from swag.core._posterior_base import State
from tests.kinds import KINDS, make_model, swag_posterior


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_a_posterior_and_samples_the_declared_shape(kind: str) -> None:
    post = KINDS[kind]()
    assert isinstance(post, swag.Posterior)
    size = post.layout.size
    assert post.sample((2, 3), generator=torch.Generator().manual_seed(0)).shape == (2, 3, size)
    assert post.sample().shape == (size,)
    with pytest.raises(ValueError, match="sample_shape must not hold negative sizes"):
        post.sample(-1)
    with pytest.raises(ValueError, match="scale must be >= 0 and finite"):
        post.sample(scale=float("nan"))
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        post.sample(generator=0)  # type: ignore[arg-type]


def test_the_base_is_abstract_and_checks_what_a_kind_returns() -> None:
    with pytest.raises(TypeError, match="abstract"):
        swag.Posterior()  # type: ignore[abstract]
    point = swag.PointPosterior.from_model(make_model())

    class Broken(swag.Posterior):
        kind = "broken_for_test"
        layout, mean = point.layout, point.mean

        def _sample(self, shape: tuple[int, ...], scale: object, generator: object) -> Tensor:
            return self.mean[:3].expand(*shape, 3)

        def to(self, device: object = None, dtype: object = None) -> Broken:
            return self

        def to_state(self) -> State:
            return {}, {}

        @classmethod
        def from_state(cls, tensors: object, meta: object, where: str) -> Broken:
            return cls()

    try:
        with pytest.raises(RuntimeError, match=r"Broken\._sample returned shape \(2, 3\)"):
            Broken().sample((2,))
    finally:
        swag.Posterior.kinds.pop("broken_for_test")


@pytest.mark.parametrize("kind", ["MultiSWAG of SWAG + subspace", "subspace (VI)", "SWAG"])
def test_to_converts_every_tensor_and_keeps_the_draws(kind: str) -> None:
    post = KINDS[kind]()
    wide = post.to(dtype=torch.float64)
    assert type(wide) is type(post) and wide.mean.dtype == torch.float64
    torch.testing.assert_close(wide.mean, post.mean.double(), rtol=1e-6, atol=1e-7)
    a = wide.sample((3,), generator=torch.Generator().manual_seed(2))
    assert a.dtype == torch.float64 and a.shape == (3, post.layout.size)


def test_diagonal_is_an_explicit_view() -> None:
    post = swag_posterior()
    diag = post.diagonal()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(
        diag.sample((4,), generator=g1), post.sample((4,), diagonal=True, generator=g2)
    )
    # the diagonal view's draws have variance σ² at its default scale 1: per entry, the mean
    # of 4000 squared standardised draws has sd √(2/4000) ≈ 0.022; 0.15 is ~7 sd
    z = (diag.sample((4000,), generator=g1) - post.mean) / post.std
    assert abs(float(z.square().mean()) - 1.0) < 0.15
    mix = swag.MultiSWAG([post, swag_posterior(1)])
    assert all(c.diagonal_only for c in mix.diagonal().components)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="SubspacePosterior has no diagonal view"):
        KINDS["subspace (ESS)"]().diagonal()


def test_diagonal_keyword_is_deprecated_where_it_was_ignored() -> None:
    post, model = swag_posterior(), make_model()
    xs = [torch.randn(5, 4, generator=torch.Generator().manual_seed(0))]
    with pytest.warns(DeprecationWarning, match=r"pass posterior\.diagonal\(\)"):
        old = swag.predict(post, model, xs, num_samples=3, diagonal=True,
                           generator=torch.Generator().manual_seed(5))  # fmt: skip
    new = swag.predict(post.diagonal(), model, xs, num_samples=3,
                       generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    mix = swag.MultiSWAG([post, swag_posterior(1)])
    with pytest.warns(DeprecationWarning, match=r"MultiSWAG\.sample\(diagonal=\.\.\.\)"):
        mix.sample((2,), diagonal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        post.sample((2,), diagonal=True)  # SWAG's own option: not deprecated


def _fit(post: swag.Posterior, generator: torch.Generator | None) -> float:
    model = make_model()
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    with warnings.catch_warnings():  # random labels: the optimum may sit at a bound
        warnings.filterwarnings("ignore", "fit_scale: the fitted scale", RuntimeWarning)
        return swag.fit_scale(post, model, [(x, y)], num_samples=2, tol=1.0,
                              generator=generator, bounds=(0.05, 2.0))  # fmt: skip


def test_fit_scale_without_a_generator_draws_from_the_global_rng() -> None:
    post = swag_posterior()
    torch.manual_seed(3)
    before = torch.get_rng_state()
    first = _fit(post, None)
    assert not torch.equal(torch.get_rng_state(), before), "None must mean the global RNG"
    torch.manual_seed(3)
    assert _fit(post, None) == first  # reproducible under torch.manual_seed


def _foreign(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Make every generator count as living on another device than the one that draws (a CPU
    stand-in for a CPU generator driving a CUDA posterior); returns the drawing devices seen."""
    seen: list[torch.device] = []

    def never(a: torch.device, b: torch.device) -> bool:
        seen.append(b)
        return False

    monkeypatch.setattr(_random, "same_device", never)
    return seen


def test_a_generator_on_another_device_seeds_one_on_the_drawing_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    post = swag_posterior()
    g = torch.Generator().manual_seed(4)
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=g)
    expected = post.sample((3,), generator=torch.Generator().manual_seed(int(seed) % 2**64))
    seen = _foreign(monkeypatch)
    g = torch.Generator().manual_seed(4)
    got = post.sample((3,), generator=g)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert seen == [post.mean.device]
    after_one = torch.Generator().manual_seed(4)
    torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=after_one)
    assert torch.equal(g.get_state(), after_one.get_state()), "the caller's advances by one draw"
    assert _random.generator_for("cpu", None) is None


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_consumer_takes_a_generator_from_another_device(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU stand-in for ``swag bench --device cuda``: bench, predict and fit_scale hand a
    CPU generator to posteriors on the training device; with every generator foreign, each
    draw goes through the rule and is reproducible."""
    post, model = KINDS[kind](), make_model()
    xs = [torch.randn(5, 4, generator=torch.Generator().manual_seed(0))]
    seen = _foreign(monkeypatch)
    runs = [swag.predict(post, model, xs, num_samples=4, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]  # fmt: skip
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert seen and all(d == post.mean.device for d in seen)
    if kind == "SWAG":
        assert _fit(post, torch.Generator().manual_seed(0)) > 0
