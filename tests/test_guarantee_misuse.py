"""Misuse of every public function: each argument given a wrong type, a negative, NaN or an
empty value (issue 10). Every case must raise the exact type the rule gives (TypeError for a
wrong type, ValueError for a wrong value), with a message naming the argument.

The cases are generated from a table: each function lists its arguments with a *kind*, and each
kind lists its bad values (a kind where a negative is legitimate, such as logits or scores,
has no negative case). A valid call of every function runs first, so a case fails only for the
argument it replaces.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib
import pytest
import torch
from torch import nn

import swag
from swag import (
    MultiSWAG,
    PointPosterior,
    SWAGPosterior,
    apply_temperature,
    fit_temperature,
    metrics,
    predict,
    update_bn,
)
from swag import plots as swag_plots

matplotlib.use("Agg")
NAN = math.nan


def _t(*rows: Any) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Bad values per kind of argument: (label, factory). Factories build fresh objects per case.
KINDS: dict[str, list[tuple[str, Callable[[], Any]]]] = {
    "probs": [
        ("wrong type", lambda: [[0.7, 0.3], [0.2, 0.8]]),
        ("negative", lambda: _t([1.5, -0.5], [0.2, 0.8])),
        ("nan", lambda: _t([NAN, 0.5], [0.2, 0.8])),
        ("empty", lambda: torch.empty(0, 2)),
    ],
    "probs3": [
        ("wrong type", lambda: [[[0.7, 0.3], [0.2, 0.8]]]),
        ("negative", lambda: _t([[1.5, -0.5], [0.2, 0.8]])),
        ("nan", lambda: _t([[NAN, 0.5], [0.2, 0.8]])),
        ("empty", lambda: torch.empty(0, 2, 2)),
    ],
    "targets": [
        ("wrong type", lambda: [0, 1]),
        ("negative", lambda: torch.tensor([0, -1])),
        ("nan", lambda: torch.tensor([0.0, NAN])),
        ("empty", lambda: torch.empty(0, dtype=torch.long)),
    ],
    "real": [  # values where a negative is legitimate: logits, scores, means, targets
        ("wrong type", lambda: [0.1, 0.2]),
        ("nan", lambda: _t(0.1, NAN)),
        ("empty", lambda: torch.empty(0)),
    ],
    "logits": [
        ("wrong type", lambda: [[1.0, 0.0], [0.0, 1.0]]),
        ("nan", lambda: _t([NAN, 0.0], [0.0, 1.0])),
        ("empty", lambda: torch.empty(0, 2)),
    ],
    "variance": [
        ("wrong type", lambda: [1.0, 1.0]),
        ("negative", lambda: _t(1.0, -1.0)),
        ("nan", lambda: _t(1.0, NAN)),
        ("empty", lambda: torch.empty(0)),
    ],
    "theta": [
        ("wrong type", lambda: [0.0, 1.0]),
        ("empty", lambda: torch.empty(0)),
    ],
    "count": [
        ("wrong type", lambda: "3"),
        ("float", lambda: 2.5),
        ("bool", lambda: True),
        ("negative", lambda: -1),
        ("nan", lambda: NAN),
    ],
    "scale": [
        ("wrong type", lambda: "0.5"),
        ("negative", lambda: -0.5),
        ("nan", lambda: NAN),
        ("inf", lambda: math.inf),
    ],
    "positive": [
        ("wrong type", lambda: "1.0"),
        ("negative", lambda: -1.0),
        ("nan", lambda: NAN),
        ("inf", lambda: math.inf),
    ],
    "unit": [("wrong type", lambda: "0.9"), ("negative", lambda: -0.5), ("nan", lambda: NAN)],
    "bool": [("wrong type", lambda: "yes"), ("int", lambda: 1), ("nan", lambda: NAN)],
    "loader": [
        ("wrong type", lambda: 3),
        ("a tensor", lambda: torch.randn(4, 4)),
        ("empty", lambda: []),
    ],
    "module": [("wrong type", lambda: "net")],
    "posterior": [("wrong type", lambda: "posterior"), ("a tensor", lambda: torch.zeros(3))],
    "generator": [("wrong type", lambda: 3), ("nan", lambda: NAN)],
    "device": [("wrong type", lambda: 3.5), ("nonsense", lambda: "not-a-device")],
    "callable": [("wrong type", lambda: 3)],
    "sample_shape": [
        ("wrong type", lambda: "3"),
        ("float", lambda: 2.5),
        ("negative", lambda: -1),
        ("nan", lambda: NAN),
    ],
    "head": [("wrong type", lambda: "probs")],
    "options": [("wrong type", lambda: {"reduce": False})],
    "bn": [("wrong type", lambda: batches()), ("true", lambda: True)],
    "noise_var": [("wrong type", lambda: "1"), ("negative", lambda: -1.0), ("nan", lambda: NAN)],
    "bounds": [
        ("wrong type", lambda: "ab"),
        ("negative", lambda: (-1.0, 10.0)),
        ("nan", lambda: (NAN, 10.0)),
        ("empty", lambda: ()),
    ],
    "levels": [
        ("wrong type", lambda: "abc"),
        ("negative", lambda: (-0.5,)),
        ("nan", lambda: (NAN,)),
        ("empty", lambda: ()),
    ],
    "text": [("wrong type", lambda: 3)],
    "ax": [("wrong type", lambda: "ax")],
    "results": [
        ("wrong type", lambda: [("SWAG", 1.0)]),
        ("not a number", lambda: {"SWAG": {"nll": "0.3"}}),
        ("empty", lambda: {}),
    ],
    "titles": [("wrong type", lambda: ["NLL"]), ("not strings", lambda: {"nll": 3})],
    "errors": [
        ("wrong type", lambda: [0.1]),
        ("not a number", lambda: {"SWAG": {"nll": "0.1"}}),
        ("negative", lambda: {"SWAG": {"nll": -0.1}}),
    ],
    "names": [("wrong type", lambda: "in"), ("not strings", lambda: (1, 2))],
    "metric_names": [("wrong type", lambda: "nll"), ("not strings", lambda: [3]), ("empty", list)],
}


# Labels of bad values of the wrong type (TypeError); every other label is a wrong value.
# "true" is bn=True: a bool where a BNRefresh is wanted (False and None are the off switches).
TYPE_LABELS = {
    "wrong type", "float", "bool", "int", "true", "a tensor", "not a number", "not strings"
}  # fmt: skip
# NaN is a float: a wrong type where an int, a bool, a generator or integer targets are wanted.
NAN_IS_A_TYPE = {"count", "bool", "generator", "sample_shape", "targets"}


def expected(kind: str, label: str) -> type[Exception]:
    """The exception the rule gives for the bad value ``label`` of an argument of ``kind``."""
    if label in TYPE_LABELS or (label == "nan" and kind in NAN_IS_A_TYPE):
        return TypeError
    return ValueError


def net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    norm: list[nn.Module] = [nn.BatchNorm1d(6)] if bn else []
    return nn.Sequential(nn.Linear(4, 6), *norm, nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 2))


def swag_posterior() -> SWAGPosterior:
    model = net()
    layout_size = sum(p.numel() for p in model.parameters())
    point = PointPosterior.from_model(model)
    g = torch.Generator().manual_seed(0)
    return SWAGPosterior(
        point.mean,
        torch.full((layout_size,), 0.01),
        0.01 * torch.randn(3, layout_size, generator=g),
        point.layout,
        n=5,
    )


def batches() -> list[torch.Tensor]:
    return [torch.randn(5, 4, generator=torch.Generator().manual_seed(1))]


@dataclass(frozen=True)
class Fn:
    """A public function, a valid call of it, and the kind of each argument."""

    name: str
    call: Callable[..., Any]
    valid: Callable[[], dict[str, Any]]
    kinds: dict[str, str]
    target: Callable[..., Any] | None = None  # the function whose signature ``call`` wraps


PROBS = {"probs": "probs", "targets": "targets"}
BINS = {**PROBS, "n_bins": "count"}
SCORES = {"scores_in": "real", "scores_out": "real"}


def _classification() -> dict[str, Any]:
    return {"probs": _t([0.7, 0.3], [0.2, 0.8]), "targets": torch.tensor([0, 1])}


def _binned() -> dict[str, Any]:
    return {**_classification(), "n_bins": 5}


def _scores() -> dict[str, Any]:
    return {"scores_in": _t(0.1, 0.2, 0.3), "scores_out": _t(0.25, 0.9)}


def _sample3() -> dict[str, Any]:
    return {"probs": _t([[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.5, 0.5]])}


def _gaussian() -> dict[str, Any]:
    return {"mean": _t(0.0, 1.0), "var": _t(1.0, 2.0), "target": _t(0.5, 0.5)}


def _predict_kwargs() -> dict[str, Any]:
    model = net(bn=True)
    return {
        "posterior": PointPosterior.from_model(model),
        "model": model,
        "loader": batches(),
        "num_samples": 2,
        "scale": 0.5,
        "generator": torch.Generator().manual_seed(0),
        "head": swag.Classification(),
        "options": swag.PredictOptions(
            bn=swag.BNRefresh(batches(), 1), device="cpu", mc_dropout=True
        ),
    }


def _predict_gaussian_kwargs() -> dict[str, Any]:
    return {"noise_var": 0.1, "output_fn": lambda out: out.squeeze(-1)}


def _options_kwargs() -> dict[str, Any]:
    return {
        "bn": swag.BNRefresh(batches(), 1),
        "mc_dropout": True,
        "input_fn": None,
        "device": "cpu",
        "reduce": True,
        "progress": False,
    }


def _sampling(point: bool = False, mixture: bool = False) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        args = {
            "sample_shape": (2,),
            "scale": 0.5,
            "generator": torch.Generator().manual_seed(0),
        }  # diagonal= is deprecated where it was accepted and ignored (point, mixture)
        return args if (point or mixture) else {**args, "diagonal": False, "blockwise": False}

    return kwargs


def _point_sample(**kw: Any) -> Any:
    return PointPosterior.from_model(net()).sample(**kw)


def _mixture_sample(**kw: Any) -> Any:
    return MultiSWAG([swag_posterior(), PointPosterior.from_model(net())]).sample(**kw)


def _allocation(**kw: Any) -> Any:
    return MultiSWAG([swag_posterior(), swag_posterior()]).allocation(**kw)


def _log_prob(**kw: Any) -> Any:
    return swag_posterior().log_prob(**kw)


FUNCTIONS = [
    Fn(
        "predict",
        predict,
        _predict_kwargs,
        {
            "posterior": "posterior",
            "model": "module",
            "loader": "loader",
            "num_samples": "count",
            "scale": "scale",
            "generator": "generator",
            "head": "head",
            "options": "options",
        },
    ),
    Fn(
        "GaussianRegression",
        swag.GaussianRegression,
        _predict_gaussian_kwargs,
        {"noise_var": "noise_var", "output_fn": "callable"},
    ),
    Fn("Classification", swag.Classification, lambda: {}, {"output_fn": "callable"}),
    Fn(
        "BNRefresh",
        swag.BNRefresh,
        lambda: {"loader": batches(), "batches": 1},
        {"loader": "loader", "batches": "count"},
    ),
    Fn(
        "PredictOptions",
        swag.PredictOptions,
        _options_kwargs,
        {
            "bn": "bn",
            "mc_dropout": "bool",
            "input_fn": "callable",
            "device": "device",
            "reduce": "bool",
            "progress": "bool",
        },
    ),
    Fn(
        "update_bn",
        update_bn,
        lambda: {"loader": batches(), "model": net(bn=True), "num_batches": 1, "device": "cpu"},
        {
            "loader": "loader",
            "model": "module",
            "num_batches": "count",
            "input_fn": "callable",
            "device": "device",
            "progress": "bool",
        },
    ),
    Fn(
        "SWAGPosterior.sample",
        lambda **kw: swag_posterior().sample(**kw),
        _sampling(),
        {
            "sample_shape": "sample_shape",
            "scale": "scale",
            "diagonal": "bool",
            "blockwise": "bool",
            "generator": "generator",
        },
        SWAGPosterior.sample,
    ),
    Fn(
        "SWAGPosterior.to_distribution",
        lambda **kw: swag_posterior().to_distribution(**kw),
        lambda: {"scale": 0.5, "diagonal": False},
        {"scale": "scale", "diagonal": "bool"},
        SWAGPosterior.to_distribution,
    ),
    Fn(
        "SWAGPosterior.log_prob",
        _log_prob,
        lambda: {"theta": swag_posterior().mean, "scale": 0.5, "diagonal": False},
        {"theta": "theta", "scale": "scale", "diagonal": "bool"},
        SWAGPosterior.log_prob,
    ),
    Fn(
        "PointPosterior.sample",
        _point_sample,
        _sampling(point=True),
        {
            "sample_shape": "sample_shape",
            "scale": "scale",
            "diagonal": "bool",
            "generator": "generator",
        },
        PointPosterior.sample,
    ),
    Fn(
        "MultiSWAG.sample",
        _mixture_sample,
        _sampling(mixture=True),
        {
            "sample_shape": "sample_shape",
            "scale": "scale",
            "diagonal": "bool",
            "generator": "generator",
        },
        MultiSWAG.sample,
    ),
    Fn(
        "MultiSWAG.allocation",
        _allocation,
        lambda: {"num_samples": 3, "generator": torch.Generator().manual_seed(0)},
        {"num_samples": "count", "generator": "generator"},
        MultiSWAG.allocation,
    ),
    *(
        Fn(f"metrics.{f.__name__}", f, _classification, PROBS)
        for f in (metrics.accuracy, metrics.nll, metrics.brier)
    ),
    *(
        Fn(f"metrics.{f.__name__}", f, _binned, BINS)
        for f in (
            metrics.ece,
            metrics.adaptive_ece,
            metrics.mce,
            metrics.reliability_curve,
            metrics.summary,
        )
    ),
    *(
        Fn(f"metrics.{f.__name__}", f, _sample3, {"probs": "probs3"})
        for f in (
            metrics.predictive_entropy,
            metrics.expected_entropy,
            metrics.mutual_information,
            metrics.max_probability,
        )
    ),
    *(
        Fn(f"metrics.{f.__name__}", f, _scores, SCORES)
        for f in (metrics.auroc, metrics.aupr_in, metrics.aupr_out)
    ),
    Fn(
        "metrics.fpr_at_tpr",
        metrics.fpr_at_tpr,
        lambda: {**_scores(), "tpr": 0.9},
        {**SCORES, "tpr": "unit"},
    ),
    Fn(
        "metrics.gaussian_nll",
        metrics.gaussian_nll,
        _gaussian,
        {"mean": "real", "var": "variance", "target": "real"},
    ),
    Fn(
        "metrics.gaussian_mixture_nll",
        metrics.gaussian_mixture_nll,
        lambda: {
            "means": _t([0.0, 1.0], [0.5, 1.0]),
            "variances": _t([1.0, 1.0], [2.0, 1.0]),
            "target": _t(0.5, 0.5),
        },
        {"means": "real", "variances": "variance", "target": "real"},
    ),
    Fn(
        "metrics.rmse",
        metrics.rmse,
        lambda: {"mean": _t(0.0, 1.0), "target": _t(0.5, 0.5)},
        {"mean": "real", "target": "real"},
    ),
    Fn(
        "metrics.interval_coverage",
        metrics.interval_coverage,
        lambda: {**_gaussian(), "levels": (0.5, 0.9)},
        {"mean": "real", "var": "variance", "target": "real", "levels": "levels"},
    ),
    Fn(
        "fit_temperature",
        fit_temperature,
        lambda: {
            "logits": _t([2.0, 0.0], [0.0, 1.0], [1.0, 0.0]),
            "targets": torch.tensor([0, 1, 1]),
            "bounds": (0.01, 100.0),
            "max_iter": 50,
            "tol": 1e-8,
        },
        {
            "logits": "logits",
            "targets": "targets",
            "bounds": "bounds",
            "max_iter": "count",
            "tol": "positive",
        },
    ),
    Fn(
        "apply_temperature",
        apply_temperature,
        lambda: {"logits": _t([2.0, 0.0]), "temperature": 1.5},
        {"logits": "logits", "temperature": "positive"},
    ),
    Fn(
        "plots.reliability_diagram",
        swag_plots.reliability_diagram,
        lambda: {**_binned(), "ax": None},
        {**BINS, "ax": "ax", "title": "text"},
    ),
    Fn(
        "plots.ood_histogram",
        swag_plots.ood_histogram,
        lambda: {**_scores(), "label": "entropy", "bins": 5},
        {**SCORES, "label": "text", "bins": "count", "names": "names", "title": "text"},
    ),
    Fn(
        "plots.compare_methods",
        swag_plots.compare_methods,
        lambda: {"results": {"SWAG": {"nll": 0.3}, "SGD": {"nll": 0.5}}, "metrics": ["nll"]},
        {
            "results": "results",
            "metrics": "metric_names",
            "errors": "errors",
            "titles": "titles",
            "ncols": "count",
            "reference": "text",
        },
    ),
]

CASES = [
    pytest.param(fn, arg, label, make, id=f"{fn.name}-{arg}-{label}")
    for fn in FUNCTIONS
    for arg, kind in fn.kinds.items()
    for label, make in KINDS[kind]
]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=[fn.name for fn in FUNCTIONS])
def test_the_valid_call_works(fn: Fn) -> None:
    fn.call(**fn.valid())


@pytest.mark.parametrize(("fn", "arg", "label", "make"), CASES)
def test_misuse_raises_an_error_naming_the_argument(
    fn: Fn, arg: str, label: str, make: Callable[[], Any]
) -> None:
    kwargs = {**fn.valid(), arg: make()}
    exc = expected(fn.kinds[arg], label)
    with pytest.raises(exc) as err:
        fn.call(**kwargs)
    assert type(err.value) is exc, f"{fn.name}({arg}=<{label}>): {err.value!r}, not {exc}"
    assert arg in str(err.value), f"{fn.name}({arg}=<{label}>): {err.value!r} does not name {arg}"


def test_the_table_covers_every_argument_of_every_function() -> None:
    """A new argument of a listed function must get a kind in the table."""
    covered: dict[Callable[..., Any], set[str]] = {}
    for fn in FUNCTIONS:
        covered.setdefault(fn.target or fn.call, set()).update(fn.kinds)
    for target, names in covered.items():
        params = set(inspect.signature(target).parameters) - {"self"}
        assert params <= names, f"{target.__qualname__}: no case for {sorted(params - names)}"


def test_nan_in_the_loader_is_refused_not_averaged_into_the_result() -> None:
    """NaN inputs would give NaN predictions and NaN BatchNorm statistics without an error."""
    nan_batches = [torch.full((5, 4), NAN)]
    model = net()
    point = PointPosterior.from_model(model)
    with pytest.raises(ValueError, match=r"predictions contain NaN.*loader"):
        predict(point, model, nan_batches)
    regression = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"predictions contain NaN.*loader"):
        predict(
            PointPosterior.from_model(regression), regression, nan_batches,
            head=swag.GaussianRegression(noise_var=0.1, output_fn=lambda out: out.squeeze(-1)),
        )  # fmt: skip
    bn_model = net(bn=True)
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    with pytest.raises(ValueError, match=r"NaN or infinite.*loader"):
        update_bn(nan_batches, bn_model)
    for k, v in bn_model.state_dict().items():  # the previous statistics are put back
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)
