"""predict's small signature and its option objects (issue 20 item 1), dict batches, the BN
loader's own generator, fit_scale's curve and SWA in one call (issue 23 items 2, 3, 4, 9)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import swag
from swag.evaluation.fit_scale import ScaleFit
from swag.landscape import evaluate_points, scan_line


def net(seed: int = 0, *, bn: bool = False, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 8)]
    layers += [nn.BatchNorm1d(8)] if bn else []
    layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout else [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(8, 3))


def swag_post(model: nn.Module, seed: int = 0) -> swag.SWAGPosterior:
    g = torch.Generator().manual_seed(seed)
    collector = swag.Collector(model, max_rank=3)
    work = copy.deepcopy(model)
    with torch.no_grad():
        for _ in range(5):
            for p in work.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            collector.collect(work)
    return collector.posterior()


def xs(n: int = 3, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g) for _ in range(n)]


def labelled(seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g))]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- issue 20 item 1: the signature and the option objects -------------------------------------


def test_predict_takes_at_most_eight_parameters() -> None:
    params = inspect.signature(swag.predict).parameters
    assert len(params) <= 8
    assert list(params) == [
        "posterior", "model", "loader", "num_samples", "scale", "generator", "head", "options",
    ]  # fmt: skip


def _swag_bn() -> tuple[swag.SWAGPosterior, nn.Module]:
    model = net(bn=True, dropout=0.3)
    return swag_post(model), model


BN = xs(2, seed=7)
ID = lambda out: out  # noqa: E731

# legacy keywords -> (their value, the same call in the new spelling)
LEGACY: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bn_loader": ({"bn_loader": BN}, {"options": swag.PredictOptions(bn=swag.BNRefresh(BN))}),
    "bn_batches": (
        {"bn_loader": BN, "bn_batches": 1},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN, batches=1))},
    ),
    "bn_loader=False": ({"bn_loader": False}, {"options": swag.PredictOptions(bn=False)}),
    "input_fn": (
        {"bn_loader": BN, "input_fn": lambda b: b * 2},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN), input_fn=lambda b: b * 2)},
    ),
    "device": (
        {"bn_loader": BN, "device": "cpu"},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN), device="cpu")},
    ),
    "reduce": (
        {"bn_loader": BN, "reduce": False},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN), reduce=False)},
    ),
    "progress": (
        {"bn_loader": BN, "progress": False},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN), progress=False)},
    ),
    "mc_dropout": (
        {"bn_loader": BN, "mc_dropout": True},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN), mc_dropout=True)},
    ),
    "output_fn": (
        {"bn_loader": BN, "output_fn": lambda z: 2 * z},
        {
            "head": swag.Classification(output_fn=lambda z: 2 * z),
            "options": swag.PredictOptions(bn=swag.BNRefresh(BN)),
        },
    ),
    "output": (
        {"bn_loader": BN, "output": "probs"},
        {"head": swag.Classification(), "options": swag.PredictOptions(bn=swag.BNRefresh(BN))},
    ),
    "diagonal": (
        {"bn_loader": BN, "diagonal": True},
        {"options": swag.PredictOptions(bn=swag.BNRefresh(BN)), "diag": True},
    ),
}


@pytest.mark.parametrize("case", list(LEGACY))
def test_each_legacy_keyword_warns_with_its_new_spelling_and_gives_the_same_output(
    case: str,
) -> None:
    post, model = _swag_bn()
    old, new = LEGACY[case]
    new = dict(new)
    target = post.diagonal() if new.pop("diag", False) else post
    with pytest.warns(DeprecationWarning) as caught:
        got = swag.predict(post, model, xs(), num_samples=2, generator=gen(), **old)
    for key in old:
        msgs = [str(w.message) for w in caught if f"predict({key}=...)" in str(w.message)]
        assert msgs, f"no DeprecationWarning names {key}"
        assert "head=" in msgs[0] or "options=" in msgs[0] or "diagonal()" in msgs[0]
    want = swag.predict(target, model, xs(), num_samples=2, generator=gen(), **new)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_legacy_gaussian_keywords_map_to_the_regression_head() -> None:
    model = nn.Linear(4, 1)
    point = swag.PointPosterior.from_model(model)
    squeeze = lambda out: out.squeeze(-1)  # noqa: E731
    with pytest.warns(DeprecationWarning) as caught:
        old = swag.predict(point, model, xs(), output="gaussian", noise_var=0.2, output_fn=squeeze)
    assert any("head=swag.GaussianRegression(noise_var" in str(w.message) for w in caught)
    new = swag.predict(
        point, model, xs(), head=swag.GaussianRegression(noise_var=0.2, output_fn=squeeze)
    )
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_legacy_keyword_next_to_its_new_object_is_refused() -> None:
    post, model = _swag_bn()
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(TypeError, match="both options= and the deprecated bn_loader="),
    ):
        swag.predict(post, model, xs(), bn_loader=BN, options=swag.PredictOptions(bn=False))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: swag.PredictOptions(bn=BN), TypeError, r"PredictOptions\.bn.*BNRefresh"),  # type: ignore[arg-type]
        (lambda: swag.PredictOptions(reduce="no"), TypeError, r"PredictOptions\.reduce"),  # type: ignore[arg-type]
        (lambda: swag.BNRefresh(BN, batches=0), ValueError, r"BNRefresh\.batches"),
        (lambda: swag.BNRefresh(torch.ones(3)), TypeError, r"BNRefresh\.loader.*\[x\]"),
        (lambda: swag.GaussianRegression(noise_var=-1.0), ValueError, r"noise_var.*σ²"),
        (lambda: swag.Classification(output_fn=3), TypeError, r"Classification\.output_fn"),  # type: ignore[arg-type]
        (lambda: swag.predict(*_swag_bn(), xs(), head="probs"), TypeError, "head must be"),  # type: ignore[call-overload]
        (lambda: swag.predict(*_swag_bn(), xs(), options={}), TypeError, "PredictOptions"),  # type: ignore[call-overload]
    ],
)
def test_option_objects_are_checked_when_built(
    build: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


def test_option_objects_are_frozen() -> None:
    options = swag.PredictOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.reduce = False  # type: ignore[misc]
    assert dataclasses.replace(options, reduce=False).reduce is False


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = net()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


def test_landscape_reads_dict_batches_through_predicts_loop() -> None:
    """On main, evaluate_points called ``model(batch)`` on a dict and failed."""
    model = DictNet()
    layout = swag.ParamLayout.from_model(model)
    thetas = [swag.PointPosterior.from_model(net(s)).mean for s in range(2)]
    pairs = labelled()
    dicts = [{"x": x, "y": y} for x, y in pairs]
    want = evaluate_points(model, layout, thetas, {"val": pairs})
    got = evaluate_points(
        model, layout, thetas, {"val": dicts},
        options=swag.PredictOptions(input_fn=lambda b: {"x": b["x"]}),
        target_fn=lambda b: b["y"],
    )  # fmt: skip
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    # and the loss is the hand-computed one for each point
    for i, theta in enumerate(thetas):
        work = copy.deepcopy(model)
        layout.scatter(theta, work)
        x, y = pairs[0]
        with torch.no_grad():
            loss = nn.functional.cross_entropy(work(x).double(), y)
        assert float(got["val_loss"][i]) == pytest.approx(float(loss), rel=1e-6)


def test_landscape_legacy_keywords_warn_and_match_the_options() -> None:
    model = net(bn=True)
    layout = swag.ParamLayout.from_model(model)
    start, end = (swag.PointPosterior.from_model(net(s, bn=True)).mean for s in (0, 1))
    loaders = {"val": labelled()}
    with pytest.warns(DeprecationWarning, match=r"scan_line\(bn_loader=\.\.\.\)"):
        old = scan_line(model, layout, start, end, loaders, ts=[0.0, 1.0], bn_loader=BN)
    new = scan_line(
        model, layout, start, end, loaders, ts=[0.0, 1.0],
        options=swag.PredictOptions(bn=swag.BNRefresh(BN)),
    )  # fmt: skip
    torch.testing.assert_close(old.metrics["val_loss"], new.metrics["val_loss"], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_fit_scale_passes_head_and_options_through() -> None:
    """On main fit_scale dropped output_fn and mc_dropout. Each point of the curve is exactly
    predict's NLL at that scale with the same head, options and generator state."""

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = net(dropout=0.3)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"logits": self.body(x)}

    model = Wrapped()
    post = swag_post(model)
    val = labelled()
    head = swag.Classification(output_fn=lambda out: out["logits"])
    options = swag.PredictOptions(mc_dropout=True)
    fit = swag.fit_scale(
        post, model, val, num_samples=3, generator=gen(4), head=head, options=options,
        bounds=(0.05, 2.0), tol=0.3,
    )  # fmt: skip
    targets = val[0][1]
    for scale, value in fit.curve:
        probs = swag.predict(
            post, model, val, num_samples=3, scale=scale, generator=gen(4), head=head,
            options=options,
        )  # fmt: skip
        assert value == swag.metrics.nll(probs, targets)
    no_dropout = swag.fit_scale(
        post, model, val, num_samples=3, generator=gen(4), head=head, bounds=(0.05, 2.0), tol=0.3
    )
    assert no_dropout.curve != fit.curve  # mc_dropout really reached the loop


# -- issue 23 item 2: dict batches --------------------------------------------------------------


class XOnly(nn.Module):
    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.body = net(bn=bn)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


def _xy(n: int = 2) -> list[dict[str, Tensor]]:
    return [{"x": x, "y": y} for x, y in labelled() * n]


@pytest.mark.parametrize("caller", ["predict", "fit_scale", "update_bn"])
def test_a_dict_batch_holding_the_targets_gets_the_input_fn_hint(caller: str) -> None:
    model = XOnly(bn=caller == "update_bn")
    post = swag_post(model)
    calls = {
        "predict": lambda: swag.predict(post, model, _xy()),
        "fit_scale": lambda: swag.fit_scale(post, model, _xy(), target_fn=lambda b: b["y"]),
        "update_bn": lambda: swag.update_bn(_xy(), model),
    }
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'y'.*input_fn=lambda b"):
        calls[caller]()


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_fit_scale_uses_predicts_default_input_fn_and_the_given_one() -> None:
    model = XOnly()
    post = swag_post(model)
    pairs, dicts = labelled(), [{"x": x, "y": y} for x, y in labelled()]
    common = {"num_samples": 2, "bounds": (0.05, 2.0), "tol": 0.5}
    want = swag.fit_scale(post, model, pairs, generator=gen(1), **common)  # type: ignore[arg-type]
    got = swag.fit_scale(
        post, model, dicts, generator=gen(1), target_fn=lambda b: b["y"],
        options=swag.PredictOptions(input_fn=lambda b: b["x"]), **common,  # type: ignore[arg-type]
    )  # fmt: skip
    assert got.curve == want.curve


# -- issue 23 item 3: a BN loader with its own generator ---------------------------------------


def _shuffled_bn(seed: int = 5) -> DataLoader[tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(99)
    data = TensorDataset(torch.randn(40, 4, generator=g))
    return DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def test_identical_calls_with_a_generator_are_bit_equal_with_a_seeded_shuffling_bn_loader() -> None:
    """On main the BN loader's own generator advanced between the calls (differences ~1e-2)."""
    post, model = swag_post(net(bn=True)), net(bn=True)
    bn = _shuffled_bn()
    state = bn.generator.get_state()  # type: ignore[union-attr]
    options = swag.PredictOptions(bn=swag.BNRefresh(bn, batches=2))
    a = swag.predict(post, model, xs(), num_samples=3, generator=gen(2), options=options)
    b = swag.predict(post, model, xs(), num_samples=3, generator=gen(2), options=options)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(bn.generator.get_state(), state)  # type: ignore[union-attr]
    c = swag.predict(post, model, xs(), num_samples=3, generator=gen(3), options=options)
    assert (a - c).abs().max() > 1e-4  # the shuffle (and draws) really follow the generator


def test_without_a_generator_the_bn_loaders_own_generator_advances_as_usual() -> None:
    post, model = swag_post(net(bn=True)), net(bn=True)
    bn = _shuffled_bn()
    state = bn.generator.get_state()  # type: ignore[union-attr]
    swag.predict(
        post, model, xs(), num_samples=1, options=swag.PredictOptions(bn=swag.BNRefresh(bn))
    )
    assert not torch.equal(bn.generator.get_state(), state)  # type: ignore[union-attr]


# -- issue 23 item 4: fit_scale's result, edges, defaults, MultiSWAG -----------------------------


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_scale_fit_is_a_float_with_its_sorted_curve() -> None:
    model = net()
    post = swag_post(model)
    fit = swag.fit_scale(post, model, labelled(), num_samples=2, generator=gen(), tol=0.5)
    assert isinstance(fit, float) and isinstance(fit, ScaleFit)
    assert fit.scale == float(fit) and f"{fit:.3f}" == f"{float(fit):.3f}"
    scales = [s for s, _ in fit.curve]
    assert scales == sorted(scales) and len(scales) >= 3
    best = min(fit.curve, key=lambda point: point[1])
    assert best[0] == pytest.approx(fit.scale, rel=1e-12)
    assert math.isclose(fit * 2, 2 * fit.scale)
    again = pickle.loads(pickle.dumps(fit))
    assert again == fit and again.curve == fit.curve and isinstance(again, ScaleFit)
    assert copy.deepcopy(fit).curve == fit.curve
    swag.predict(post, model, xs(), num_samples=2, scale=fit)  # usable as a scale


def test_fit_scale_at_the_lower_edge_says_the_mean_alone_is_best() -> None:
    model = nn.Linear(4, 3)
    layout = swag.ParamLayout.from_model(model)
    g = gen(0)
    mean = torch.randn(layout.size, generator=g)
    post = swag.SWAGPosterior(
        mean, torch.ones(layout.size), torch.zeros(0, layout.size), layout, n=2
    )
    x = torch.randn(200, 4, generator=g)
    y = (x @ mean[:12].view(3, 4).T + mean[12:]).argmax(-1)  # the mean's own labels: no spread best
    with pytest.warns(RuntimeWarning, match=r"lower edge.*mean alone \(SWA\) is best") as caught:
        swag.fit_scale(post, model, [(x, y)], num_samples=4, generator=gen(1), tol=0.2)
    assert not any("widen" in str(w.message) for w in caught)


def test_fit_scale_at_the_upper_edge_still_says_widen_bounds() -> None:
    model = nn.Linear(4, 3)
    layout = swag.ParamLayout.from_model(model)
    g = gen(2)
    mean = 3 * torch.randn(layout.size, generator=g)  # confident weights
    post = swag.SWAGPosterior(
        mean, torch.ones(layout.size), torch.zeros(0, layout.size), layout, n=2
    )
    x = torch.randn(300, 4, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)  # labels without signal: the flattest is best
    with pytest.warns(RuntimeWarning, match="upper edge.*widen bounds"):
        swag.fit_scale(
            post, model, [(x, y)], num_samples=16, generator=gen(3), bounds=(0.01, 0.05), tol=0.2
        )


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
def test_fit_scale_num_samples_defaults_to_predicts(monkeypatch: pytest.MonkeyPatch) -> None:
    import swag.evaluation.fit_scale as scale_module

    seen: list[int] = []
    real = scale_module.run

    def spy(*args: Any) -> Any:
        seen.append(args[3])
        return real(*args)

    monkeypatch.setattr(scale_module, "run", spy)
    model = net()
    post = swag_post(model)
    swag.fit_scale(post, model, labelled(), generator=gen(), tol=2.0, bounds=(0.1, 1.0))
    first = len(seen)
    mix = swag.MultiSWAG([post, swag_post(model, 1), swag_post(model, 2), swag_post(model, 3)])
    swag.fit_scale(mix, model, labelled(), generator=gen(), tol=2.0, bounds=(0.1, 1.0))
    assert set(seen[:first]) == {30} and set(seen[first:]) == {32}  # 30 rounded up to 4 members


def test_predict_default_for_a_multiswag_is_a_multiple_of_its_members() -> None:
    model = net()
    mix = swag.MultiSWAG([swag_post(model, s) for s in range(4)])
    out = swag.predict(
        mix, model, xs(1), generator=gen(), options=swag.PredictOptions(reduce=False)
    )
    assert out.shape[0] == 32


@pytest.mark.filterwarnings("ignore:fit_scale. the fitted scale:RuntimeWarning")
@pytest.mark.parametrize("caller", ["predict", "fit_scale"])
def test_uneven_multiswag_num_samples_warns(caller: str) -> None:
    model = net()
    mix = swag.MultiSWAG([swag_post(model, s) for s in range(3)])
    call = {
        "predict": lambda n: swag.predict(mix, model, xs(1), num_samples=n, generator=gen()),
        "fit_scale": lambda n: swag.fit_scale(
            mix, model, labelled(), num_samples=n, generator=gen(), tol=2.0, bounds=(0.1, 1.0)
        ),
    }[caller]
    with pytest.warns(UserWarning, match=r"num_samples=4 is not a multiple of the MultiSWAG's 3"):
        call(4)
    call(6)  # a multiple: no warning (warnings are errors here)


# -- issue 23 item 9: SWA in one call -----------------------------------------------------------


def test_swa_in_one_call_equals_to_model_update_bn_and_a_loop() -> None:
    model = net(bn=True)
    post = swag_post(model)
    train = xs(4, seed=3)
    got = swag.predict(
        post.swa(), model, xs(), options=swag.PredictOptions(bn=swag.BNRefresh(train))
    )
    swa = post.to_model(model)
    swag.update_bn(train, swa)
    swa.eval()
    with torch.no_grad():
        want = torch.cat([swa(x).softmax(-1) for x in xs()])
    # the same float32 operations in the same order; the float64 average of one pass is exact
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert isinstance(post.swa(), swag.PointPosterior) and post.swa().mean is post.mean


def test_multiswag_swa_is_the_ensemble_of_the_members_means() -> None:
    model = net()
    members = [swag_post(model, s) for s in range(2)]
    got = swag.predict(swag.MultiSWAG(members).swa(), model, xs())
    singles = [swag.predict(m.swa(), model, xs()) for m in members]
    torch.testing.assert_close(got, (singles[0] + singles[1]) / 2, rtol=1e-6, atol=1e-7)
