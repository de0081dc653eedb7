"""predict: BMA against brute-force loops, BN refresh, RNG hygiene, regression, MC dropout."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

import swag
from swag import Collector, ParamLayout, SWAGPosterior, fit_scale, update_bn
from swag.core.multiswag import MultiSWAG
from swag.core.point import PointPosterior
from swag.evaluation.predict import predict
from tests.reference import random_walk

SEED_HIGH = 2**63 - 1  # predict draws one seed from the generator first (documented)


def mlp(seed: int = 0, *, bn: bool = False, dropout: float = 0.0, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 8)]
    layers += [nn.BatchNorm1d(8)] if bn else []
    layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout else [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(8, out))


def data(n: int = 3, batch: int = 10, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4, generator=g) * 2 + 1 for _ in range(n)]


def swag_posterior(model: nn.Module, seed: int = 0, steps: int = 6) -> SWAGPosterior:
    collector = Collector(model, max_rank=4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        random_walk(model, 1, g, step_size=0.3)
        collector.collect()
    return collector.posterior()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force(
    posterior: SWAGPosterior, model: nn.Module, xs: list[Tensor], num: int, seed: int, bn: Any
) -> Tensor:
    """for s: θ = sample; copy; apply; update_bn; eval forward; softmax; average in float64."""
    g = gen(seed)
    torch.randint(SEED_HIGH, (), generator=g)
    total = torch.zeros(sum(len(x) for x in xs), 3, dtype=torch.float64)
    for _ in range(num):
        net = posterior.to_model(model, posterior.sample(generator=g))
        update_bn(bn, net)
        net.eval()
        with torch.no_grad():
            total += torch.cat([net(x).softmax(-1) for x in xs])
    return total / num


def test_point_posterior_equals_one_forward_pass_exactly(device: torch.device) -> None:
    model = mlp().to(device)
    xs = [x.to(device) for x in data()]
    with torch.no_grad():
        expected = torch.cat([model(x).softmax(-1) for x in xs])
    point = PointPosterior.from_model(model)
    got = predict(
        point, mlp(1), xs, num_samples=5, options=swag.PredictOptions(device=device)
    )  # other weights: overwritten
    assert got.dtype == torch.float32 and got.shape == (30, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_matches_brute_force_loop_with_batchnorm() -> None:
    model = mlp(bn=True)
    post = swag_posterior(model)
    xs, bn = data(), data(4, seed=1)
    got = predict(
        post,
        model,
        xs,
        num_samples=4,
        generator=gen(3),
        options=swag.PredictOptions(bn=swag.BNRefresh(bn)),
    )
    expected = brute_force(post, model, xs, 4, 3, bn)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)
    per_sample = predict(
        post,
        model,
        xs,
        num_samples=4,
        generator=gen(3),
        options=swag.PredictOptions(bn=swag.BNRefresh(bn), reduce=False),
    )
    assert per_sample.shape == (4, 30, 3)
    torch.testing.assert_close(per_sample.double().mean(0), expected, rtol=1e-6, atol=1e-7)


def test_multiswag_of_identical_components_equals_the_component() -> None:
    model = mlp()
    post = swag_posterior(model)
    xs = data()
    mix = predict(MultiSWAG([post, post, post]), model, xs, num_samples=30, generator=gen(1))
    single = predict(post, model, xs, num_samples=30, generator=gen(1))
    torch.testing.assert_close(mix, single, rtol=0, atol=0)
    torch.testing.assert_close(
        mix.double(), brute_force(post, model, xs, 30, 1, []), rtol=1e-6, atol=1e-7
    )


@pytest.mark.filterwarnings("ignore:num_samples=.* not a multiple:UserWarning")
def test_multiswag_samples_follow_the_stratified_allocation() -> None:
    members = [PointPosterior.from_model(mlp(seed)) for seed in range(3)]
    xs = data()
    singles = [predict(m, mlp(), xs, num_samples=1) for m in members]
    for seed in range(3):
        # predict draws its RNG seed first, then the allocation's remainder members
        g = gen(seed)
        torch.randint(SEED_HIGH, (), generator=g)
        counts = MultiSWAG(members).allocation(5, generator=g)
        per_sample = predict(
            MultiSWAG(members),
            mlp(),
            xs,
            num_samples=5,
            generator=gen(seed),
            options=swag.PredictOptions(reduce=False),
        )
        owners = [i for i, n in enumerate(counts) for _ in range(n)]
        for got, owner in zip(per_sample, owners, strict=True):
            torch.testing.assert_close(got, singles[owner], rtol=0, atol=0)
    two = predict(MultiSWAG(members), mlp(), xs, num_samples=2, generator=gen(0))
    g = gen(0)
    torch.randint(SEED_HIGH, (), generator=g)
    picked = [i for i, n in enumerate(MultiSWAG(members).allocation(2, generator=g)) if n]
    torch.testing.assert_close(two, (singles[picked[0]] + singles[picked[1]]) / 2)


def test_seeded_reproducibility_without_touching_global_rng() -> None:
    model = mlp(bn=True)
    post = swag_posterior(model)
    xs = data()
    bn = DataLoader(TensorDataset(torch.cat(data(4, seed=2))), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    options = swag.PredictOptions(bn=swag.BNRefresh(bn, batches=2))

    def run(seed: int) -> torch.Tensor:
        return predict(post, model, xs, num_samples=3, generator=gen(seed), options=options)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be left alone"
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4


def test_bn_is_refreshed_for_every_sample_and_the_model_is_untouched() -> None:
    model = mlp(bn=True)
    post = swag_posterior(model)
    model.train()
    before = copy.deepcopy(model.state_dict())
    seen: list[Tensor] = []

    def record(module: nn.Module, args: Any) -> None:
        if not module.training:
            seen.append(module.running_mean.clone())  # type: ignore[operator]

    model[1].register_forward_pre_hook(record)  # deep-copied into the working copy
    xs, bn = data(1), data(3, seed=1)
    predict(
        post,
        model,
        xs,
        num_samples=3,
        generator=gen(0),
        options=swag.PredictOptions(bn=swag.BNRefresh(bn)),
    )
    assert len(seen) == 3
    g = gen(0)
    torch.randint(SEED_HIGH, (), generator=g)
    for stats in seen:  # each sample's statistics are those update_bn gives for its own θ
        net = post.to_model(model, post.sample(generator=g))
        update_bn(bn, net)
        torch.testing.assert_close(stats, net.get_buffer("1.running_mean"), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(seen[0], seen[1], atol=1e-4)
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_batchnorm_needs_bn_loader_or_explicit_opt_out() -> None:
    model = mlp(bn=True)
    point = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match=r"bn=swag.BNRefresh\(train_loader\)"):
        predict(point, model, data(), num_samples=1)
    update_bn(data(2, seed=5), model)  # statistics that belong to these weights
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x).softmax(-1) for x in data()])
    got = predict(point, model, data(), num_samples=1, options=swag.PredictOptions(bn=False))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class GaussianNet(nn.Module):
    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.style = nn.Linear(4, 2), style

    def forward(self, x: Tensor) -> Any:
        out = self.body(x)
        mean, var = out[:, 0], nn.functional.softplus(out[:, 1])
        if self.style == "tuple":
            return mean, var
        return torch.stack([mean, var], -1) if self.style == "stacked" else mean


@pytest.mark.parametrize("style", ["tuple", "stacked", "noise"])
def test_regression_mixture_variance(style: str) -> None:
    model = GaussianNet(style)
    post = swag_posterior(model)
    noise = 0.3 if style == "noise" else None
    kw: dict[str, Any] = {"num_samples": 6, "head": swag.GaussianRegression(noise_var=noise)}
    means, variances = predict(
        post, model, data(), generator=gen(2), **kw, options=swag.PredictOptions(reduce=False)
    )
    assert means.shape == variances.shape == (6, 30)
    mu, var = predict(post, model, data(), generator=gen(2), **kw)
    m, v = means.double().numpy(), variances.double().numpy()
    np.testing.assert_allclose(mu.numpy(), m.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), v.mean(0) + m.var(0), rtol=1e-5)
    assert m.var(0).min() > 0  # the epistemic term really contributes
    if noise is not None:
        np.testing.assert_allclose(v, 0.3, rtol=1e-6)


def test_regression_rejects_ambiguous_outputs() -> None:
    point = PointPosterior.from_model(mlp(out=3))
    with pytest.raises(ValueError, match="must return \\(mean, variance\\)"):
        predict(point, mlp(out=3), data(), num_samples=1, head=swag.GaussianRegression())
    with (
        pytest.warns(DeprecationWarning, match="noise_var"),
        pytest.raises(ValueError, match="noise_var is for output='gaussian' only"),
    ):
        predict(point, mlp(out=3), data(), num_samples=1, noise_var=1.0)  # type: ignore[call-overload]


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, pixels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(pixels * mask)}


def test_dict_batches_and_output_fn() -> None:
    model = DictNet()
    point = PointPosterior.from_model(model)
    batches = [{"pixels": x, "mask": torch.ones_like(x)} for x in data()]
    got = predict(
        point,
        model,
        batches,
        num_samples=1,
        head=swag.Classification(output_fn=lambda out: out["logits"]),
    )
    plain = predict(PointPosterior.from_model(model.net), model.net, data(), num_samples=1)
    torch.testing.assert_close(got, plain, rtol=0, atol=0)
    with pytest.raises(TypeError, match="output_fn="):
        predict(point, model, batches, num_samples=1)


def test_loader_checks() -> None:
    model = mlp()
    point = PointPosterior.from_model(model)
    dataset = TensorDataset(torch.cat(data()), torch.zeros(30))
    tuples = predict(point, model, DataLoader(dataset, batch_size=7), num_samples=1)
    torch.testing.assert_close(tuples, predict(point, model, data(), num_samples=1))
    with pytest.raises(ValueError, match="shuffle=False"):
        predict(point, model, DataLoader(dataset, batch_size=7, shuffle=True))
    with pytest.raises(ValueError, match="no batch on its second pass: it is exhausted"):
        predict(point, model, (x for x in data()), num_samples=2)  # one-shot generator
    with pytest.raises(ValueError, match=r"yielded no batch$"):
        predict(point, model, [], num_samples=2)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0)  # shuffles by default
    with pytest.raises(ValueError, match=r"DistributedSampler\(dataset, shuffle=False\)"):
        predict(point, model, DataLoader(dataset, batch_size=7, sampler=sampler))
    in_order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
    got = predict(point, model, DataLoader(dataset, batch_size=7, sampler=in_order))
    torch.testing.assert_close(got, tuples)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        predict(point, model, data(), num_samples=0)


def test_mc_dropout_is_stochastic_reproducible_and_leaves_global_rng_alone() -> None:
    model = mlp(dropout=0.5)
    point = PointPosterior.from_model(model)
    kw: dict[str, Any] = {
        "num_samples": 4,
        "options": swag.PredictOptions(mc_dropout=True, reduce=False),
    }
    state = torch.get_rng_state()
    a = predict(point, model, data(), generator=gen(0), **kw)
    b = predict(point, model, data(), generator=gen(0), **kw)
    c = predict(point, model, data(), generator=gen(1), **kw)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert (a[0] - a[1]).abs().max() > 1e-3, "passes must differ: dropout is active"
    deterministic = predict(
        point, model, data(), num_samples=2, options=swag.PredictOptions(reduce=False)
    )
    torch.testing.assert_close(deterministic[0], deterministic[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no Dropout layer"):
        predict(point, mlp(), data(), options=swag.PredictOptions(mc_dropout=True))


def test_mc_dropout_keeps_batchnorm_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    modes: list[bool] = []
    model[1].register_forward_pre_hook(lambda m, _: modes.append(m.training))
    model[2].register_forward_pre_hook(lambda m, _: modes.append(m.training))
    point = PointPosterior.from_model(model)
    predict(
        point,
        model,
        data(1),
        num_samples=2,
        options=swag.PredictOptions(bn=swag.BNRefresh(data(1)), progress=True, mc_dropout=True),
    )
    # per sample: refresh (BN train, dropout train), then eval pass (BN eval, dropout train)
    assert modes == [True, True, False, True] * 2


@pytest.mark.parametrize(
    ("kind", "mc_dropout", "expected"),
    [("point", False, 1), ("ensemble", False, 3), ("swag", False, 30), ("point", True, 30)],
)
def test_default_num_samples_is_one_pass_per_distinct_network(
    kind: str, mc_dropout: bool, expected: int
) -> None:
    model = mlp(dropout=0.5)
    posterior: Any = {
        "point": lambda: PointPosterior.from_model(model),
        "ensemble": lambda: MultiSWAG(
            [PointPosterior.from_model(mlp(s, dropout=0.5)) for s in range(3)]
        ),
        "swag": lambda: swag_posterior(model),
    }[kind]()
    per_sample = predict(
        posterior,
        model,
        data(n=1),
        options=swag.PredictOptions(reduce=False, mc_dropout=mc_dropout),
    )
    assert per_sample.shape == (expected, 10, 3)


def test_outputs_that_are_not_logits_of_two_or_more_classes() -> None:
    one_logit = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"softmax over one is always 1.*torch.zeros_like"):
        predict(PointPosterior.from_model(one_logit), one_logit, data())
    softmaxed = nn.Sequential(mlp(), nn.Softmax(-1))
    with pytest.warns(UserWarning, match="look like probabilities"):
        predict(PointPosterior.from_model(softmaxed), softmaxed, data())


def test_nested_deep_ensemble_weighs_members_as_the_mixture_does() -> None:
    members = [PointPosterior.from_model(mlp(seed)) for seed in range(3)]
    nested = MultiSWAG([members[0], MultiSWAG(members[1:])])  # weights 1/2, 1/4, 1/4
    per_sample = predict(nested, mlp(), data(), options=swag.PredictOptions(reduce=False))
    assert per_sample.shape[0] == 4  # 2 · lcm(1, 2): the smallest exact allocation
    singles = [predict(m, mlp(), data()) for m in members]
    expected = singles[0] / 2 + (singles[1] + singles[2]) / 4
    torch.testing.assert_close(per_sample.mean(0), expected)


def test_noise_var_must_broadcast_per_batch() -> None:
    model = mlp(out=1)
    point = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match="noise_var of shape \\(30,\\) does not broadcast"):
        predict(point, model, data(), head=swag.GaussianRegression(noise_var=torch.ones(30)))
    mean, var = predict(
        point, model, data(), head=swag.GaussianRegression(noise_var=torch.tensor([0.5]))
    )
    assert torch.equal(var, torch.full_like(mean, 0.5))


def test_predict_asks_for_bn_loader_with_tracked_instance_norm() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.InstanceNorm2d(3, track_running_stats=True))
    model.append(nn.Flatten())
    post = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match="BNRefresh"):
        predict(post, model, [torch.randn(2, 2, 5, 5)])


class Head(nn.Module):
    def __init__(self, mean_shape: tuple[int, ...], var_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.shapes = mean_shape, var_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.lin(x)
        return out.reshape(self.shapes[0]), out.exp().reshape(self.shapes[1])


@pytest.mark.parametrize("shapes", [((8,), (8, 1)), ((8, 1), (8,))])
def test_gaussian_head_with_broadcasting_shapes_refused(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    model = Head(*shapes)
    post = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match=r"shape \(8,\).*shape \(8, 1\)|\(8, 1\).*\(8,\)"):
        predict(post, model, [torch.randn(8, 3)], head=swag.GaussianRegression())


class Stream(IterableDataset[tuple[Tensor, Tensor]]):
    """A fixed-order stream of (x, y) examples, without ``__len__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(zip(self.x, self.y, strict=True))


def _linear_swag(g: torch.Generator) -> tuple[nn.Module, SWAGPosterior]:
    model = nn.Linear(3, 4)
    layout = ParamLayout.from_model(model)
    mean, std = torch.randn(layout.size, generator=g), 0.3 * torch.ones(layout.size)
    return model, SWAGPosterior(mean, std, torch.randn(2, layout.size, generator=g), layout, n=5)


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_predict_and_fit_scale_accept_a_loader_without_len() -> None:
    g = torch.Generator().manual_seed(3)
    model, post = _linear_swag(g)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 4, (12,), generator=g)
    stream = DataLoader(Stream(x, y), batch_size=5)
    listed = list(DataLoader(Stream(x, y), batch_size=5))
    seed = torch.Generator().manual_seed
    got = predict(post, model, stream, num_samples=3, generator=seed(0))
    want = predict(post, model, listed, num_samples=3, generator=seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    kw = {"num_samples": 2, "tol": 0.5, "generator": seed(1)}
    assert fit_scale(post, model, stream, **kw) == fit_scale(post, model, listed, **kw)  # type: ignore[arg-type]


def _pruned(g: torch.Generator) -> nn.Sequential:
    torch.manual_seed(int(torch.randint(2**31, (), generator=g)))
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    model(torch.randn(6, 4, generator=g)).sum().backward()  # `weight` is now a non-leaf
    return model


def test_pruned_model_after_backward_predicts_and_copies() -> None:
    """Against the pruned model itself: a point posterior's prediction is its softmax, and
    ``to_model`` gives a copy whose outputs match; the original is untouched."""
    g = torch.Generator().manual_seed(5)
    model = _pruned(g)
    x = torch.randn(7, 4, generator=g)
    post = PointPosterior.from_model(model)
    got = predict(post, model, [x])
    copy = post.to_model(model)
    with torch.no_grad():  # a forward here would recompute `weight` as a leaf: only after
        want = model(x)
        torch.testing.assert_close(copy(x), want)
    torch.testing.assert_close(got, want.softmax(-1))
    copy[0].weight_orig.data.zero_()  # the copy owns its parameters
    assert model[0].weight_orig.abs().sum() > 0


class Recorded(SWAGPosterior):
    """A SWAG posterior that keeps a copy of every draw it hands out."""

    draws: list[Tensor]

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        theta = super().sample(*args, **kwargs)
        self.draws.append(theta.clone())
        return theta


def test_pruned_model_swag_predictions_follow_the_mask() -> None:
    """SWAG draws of ``weight_orig`` are masked in the working copy: entries that prune removed
    have no effect. Reference: each recorded draw applied by hand to a plain, unpruned net."""
    g = torch.Generator().manual_seed(6)
    model = _pruned(g)
    layout = ParamLayout.from_model(model)
    mean = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    post = Recorded(mean, 0.2 * torch.ones(layout.size), torch.zeros(0, layout.size), layout, n=3)
    post.draws = []
    x = torch.randn(5, 4, generator=g)
    got = predict(post, model, [x], num_samples=3, generator=torch.Generator().manual_seed(7))
    assert len(post.draws) == 3
    plain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = model[0].weight_mask
    probs = []
    for theta in post.draws:
        values = dict(zip(layout.names, layout.split(theta), strict=True))
        with torch.no_grad():
            plain[0].weight.copy_(values["0.weight_orig"] * mask)
            plain[0].bias.copy_(values["0.bias"])
            plain[2].weight.copy_(values["2.weight"])
            plain[2].bias.copy_(values["2.bias"])
            probs.append(plain(x).softmax(-1))
    torch.testing.assert_close(got, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
