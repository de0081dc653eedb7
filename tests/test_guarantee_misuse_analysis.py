"""Issue 18, the analysis side: subspace inference, loss surfaces and their plots, hardened.

Generated tables: misuse of every public function of ``swag.subspace``, ``swag.landscape`` and
the loss-surface plots (exception type, and the message names the argument); one-shot
iterables for every public function that takes batches, with an audit that finds those
functions by their signatures so a new one cannot be left out; degenerate geometry in float32
and float64; NaN and inf that must never give a finite number; SubspacePosterior's sample
checks against SWAGPosterior's; the memory of ``scan_plane``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import swag
from swag.evaluation.plots import loss_line, loss_plane
from swag.family.averaging import greedy_soup
from swag.family.landscape import Plane, evaluate_points, scan_line, scan_plane
from swag.family.subspace import (
    Subspace,
    SubspaceLikelihood,
    SubspacePosterior,
    elliptical_slice,
    fit_vi,
)


def data(n: int = 12, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, classes, (n,), generator=g)


def collected(seed: int = 0) -> tuple[nn.Module, swag.SWAGPosterior]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 3)
    collector = swag.Collector(model, max_rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(6):
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            collector.collect()
    return model, collector.posterior()


MODEL, POST = collected()
LAYOUT = POST.layout
SUB = Subspace.pca(POST, 2)
X, Y = data()
BATCHES = [(X[:6], Y[:6]), (X[6:], Y[6:])]
LIK = SubspaceLikelihood(MODEL, SUB, BATCHES)
ESS_POST = SubspacePosterior(SUB, chain=torch.randn(4, 2))
VI_POST = SubspacePosterior(SUB, loc=torch.zeros(2), scale_tril=torch.eye(2))
PLANE = Plane.from_subspace(SUB)
LOADERS = {"train": BATCHES}


def once(items: list[Any]) -> Iterator[Any]:
    """A one-shot iterable: a generator over ``items``."""
    yield from items


# -- misuse table: (call, exception, what the message must name) ------------------------------

A = [0.0, 1.0]
V = [[1.0, 2.0], [3.0, 4.0]]

MISUSE: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    # subspace: likelihood
    "lik model": (lambda: SubspaceLikelihood("m", SUB, BATCHES), TypeError, "model"),  # type: ignore[arg-type]
    "lik subspace": (lambda: SubspaceLikelihood(MODEL, POST, BATCHES), TypeError, "subspace"),  # type: ignore[arg-type]
    "lik loader tensor": (lambda: SubspaceLikelihood(MODEL, SUB, X), TypeError, "loader"),
    "lik loader empty": (lambda: SubspaceLikelihood(MODEL, SUB, []), ValueError, "loader"),
    "lik kind": (
        lambda: SubspaceLikelihood(MODEL, SUB, BATCHES, likelihood="poisson"),  # type: ignore[arg-type]
        ValueError,
        "likelihood",
    ),
    "lik noise_var nan": (
        lambda: SubspaceLikelihood(MODEL, SUB, BATCHES, likelihood="gaussian", noise_var=math.nan),
        ValueError,
        "noise_var",
    ),
    "lik noise_var str": (
        lambda: SubspaceLikelihood(MODEL, SUB, BATCHES, likelihood="gaussian", noise_var="1"),  # type: ignore[arg-type]
        TypeError,
        "noise_var",
    ),
    "lik input_fn": (
        lambda: SubspaceLikelihood(MODEL, SUB, BATCHES, input_fn=3),  # type: ignore[arg-type]
        TypeError,
        "input_fn",
    ),
    "lik device": (
        lambda: SubspaceLikelihood(MODEL, SUB, BATCHES, device=1.5),  # type: ignore[arg-type]
        TypeError,
        "device",
    ),
    "lik float targets": (
        lambda: SubspaceLikelihood(MODEL, SUB, [(X, Y.float())]),
        TypeError,
        "target",
    ),
    "lik (B, 1) targets": (
        lambda: SubspaceLikelihood(MODEL, SUB, [(X, Y[:, None])]),
        ValueError,
        "target",
    ),
    "lik call (B, 1) via target_fn": (
        lambda: SubspaceLikelihood(MODEL, SUB, [(X, Y)], target_fn=lambda b: b[1]).batch_log_lik(
            torch.zeros(2), X, Y[:, None]
        ),
        ValueError,
        "target",
    ),
    # subspace: ESS
    "ess log_likelihood": (lambda: elliptical_slice(3, 2, 2), TypeError, "log_likelihood"),  # type: ignore[arg-type]
    "ess dim float": (lambda: elliptical_slice(LIK, 2.0, 2), TypeError, "dim"),  # type: ignore[arg-type]
    "ess num_samples 0": (lambda: elliptical_slice(LIK, 2, 0), ValueError, "num_samples"),
    "ess burn_in -1": (lambda: elliptical_slice(LIK, 2, 1, burn_in=-1), ValueError, "burn_in"),
    "ess thin str": (lambda: elliptical_slice(LIK, 2, 1, thin="2"), TypeError, "thin"),  # type: ignore[arg-type]
    "ess prior_std str": (
        lambda: elliptical_slice(LIK, 2, 1, prior_std="1"),  # type: ignore[arg-type]
        TypeError,
        "prior_std",
    ),
    "ess temperature nan": (
        lambda: elliptical_slice(LIK, 2, 1, temperature=math.nan),
        ValueError,
        "temperature",
    ),
    "ess init shape": (
        lambda: elliptical_slice(LIK, 2, 1, init=torch.zeros(3)),
        ValueError,
        "init",
    ),
    "ess init nan": (
        lambda: elliptical_slice(LIK, 2, 1, init=torch.tensor([math.nan, 0.0])),
        ValueError,
        "init",
    ),
    "ess init list": (lambda: elliptical_slice(LIK, 2, 1, init=[0.0, 0.0]), TypeError, "init"),  # type: ignore[arg-type]
    "ess generator": (lambda: elliptical_slice(LIK, 2, 1, generator=3), TypeError, "generator"),  # type: ignore[arg-type]
    "ess max_shrinks": (
        lambda: elliptical_slice(LIK, 2, 1, max_shrinks=0),
        ValueError,
        "max_shrinks",
    ),
    "ess progress": (lambda: elliptical_slice(LIK, 2, 1, progress="no"), TypeError, "progress"),  # type: ignore[arg-type]
    # subspace: VI
    "vi likelihood": (lambda: fit_vi(POST), TypeError, "likelihood"),  # type: ignore[arg-type]
    "vi lr inf": (lambda: fit_vi(LIK, lr=math.inf), ValueError, "lr"),
    "vi init_std nan": (lambda: fit_vi(LIK, init_std=math.nan), ValueError, "init_std"),
    "vi epochs float": (lambda: fit_vi(LIK, epochs=2.0), TypeError, "epochs"),  # type: ignore[arg-type]
    "vi mc_samples 0": (lambda: fit_vi(LIK, mc_samples=0), ValueError, "mc_samples"),
    "vi full str": (lambda: fit_vi(LIK, full="yes"), TypeError, "full"),  # type: ignore[arg-type]
    # subspace: posterior
    "post sample scale str": (lambda: ESS_POST.sample(2, scale="1"), TypeError, "scale"),  # type: ignore[arg-type]
    "post sample shape -1": (lambda: VI_POST.sample(-1), ValueError, "sample_shape"),
    "post sample_z shape 1.5": (lambda: ESS_POST.sample_z(1.5), TypeError, "sample_shape"),  # type: ignore[arg-type]
    "post sample diagonal": (lambda: ESS_POST.sample(diagonal="no"), TypeError, "diagonal"),  # type: ignore[arg-type]
    "post sample generator": (lambda: VI_POST.sample_z(2, generator=0), TypeError, "generator"),  # type: ignore[arg-type]
    "post both": (
        lambda: SubspacePosterior(SUB, chain=torch.zeros(2, 2), loc=torch.zeros(2)),
        ValueError,
        "chain",
    ),
    "post chain nan": (
        lambda: SubspacePosterior(SUB, chain=torch.full((2, 2), math.nan)),
        ValueError,
        "chain",
    ),
    "post temperature": (
        lambda: SubspacePosterior(SUB, chain=torch.zeros(2, 2), temperature=-1.0),
        ValueError,
        "temperature",
    ),
    # subspace: basis
    "pca source": (lambda: Subspace.pca(MODEL, 2), TypeError, "source"),  # type: ignore[arg-type]
    "pca rank": (lambda: Subspace.pca(POST, 0), ValueError, "rank"),
    "random norm": (lambda: Subspace.random(POST, 2, norm=-1.0), ValueError, "norm"),
    "subspace shift": (
        lambda: Subspace(torch.zeros(3), SUB.basis, LAYOUT),
        ValueError,
        "shift",
    ),
    "theta z": (lambda: SUB.theta(torch.zeros(3)), ValueError, "z"),
    "theta z list": (lambda: SUB.theta([0.0, 0.0]), TypeError, "z"),  # type: ignore[arg-type]
    "project theta": (lambda: SUB.project(torch.zeros(3)), ValueError, "theta"),
    "pca rank float": (lambda: Subspace.pca(POST, 1.0), TypeError, "rank"),  # type: ignore[arg-type]
    "random norm str": (lambda: Subspace.random(POST, 2, norm="1"), TypeError, "norm"),  # type: ignore[arg-type]
    "random generator": (lambda: Subspace.random(POST, 2, generator=1), TypeError, "generator"),  # type: ignore[arg-type]
    "subspace layout": (lambda: Subspace(SUB.shift, SUB.basis, None), TypeError, "layout"),  # type: ignore[arg-type]
    "subspace basis list": (lambda: Subspace(SUB.shift, [[0.0]], LAYOUT), TypeError, "basis"),  # type: ignore[arg-type]
    "subspace basis dtype": (
        lambda: Subspace(SUB.shift, SUB.basis.double(), LAYOUT),
        ValueError,
        "basis",
    ),
    "subspace kind": (lambda: Subspace(SUB.shift, SUB.basis, LAYOUT, "svd"), ValueError, "kind"),
    "post subspace": (
        lambda: SubspacePosterior(POST, chain=torch.zeros(2, 2)),
        TypeError,
        "subspace",
    ),  # type: ignore[arg-type]
    "post chain list": (lambda: SubspacePosterior(SUB, chain=[[0.0, 0.0]]), TypeError, "chain"),  # type: ignore[arg-type]
    "post prior_std str": (
        lambda: SubspacePosterior(SUB, chain=torch.zeros(2, 2), prior_std="1"),  # type: ignore[arg-type]
        TypeError,
        "prior_std",
    ),
    # landscape: geometry
    "plane parallel": (
        lambda: Plane(SUB.shift, SUB.basis[0], -2.5 * SUB.basis[0]),
        ValueError,
        "u and v",
    ),
    "plane zero v": (
        lambda: Plane(SUB.shift, SUB.basis[0], torch.zeros_like(SUB.shift)),
        ValueError,
        "v",
    ),
    "plane origin list": (lambda: Plane([0.0], SUB.basis[0], SUB.basis[1]), TypeError, "origin"),  # type: ignore[arg-type]
    "plane u shape": (lambda: Plane(SUB.shift, SUB.basis, SUB.basis[1]), ValueError, "u"),
    "plane v nan": (
        lambda: Plane(SUB.shift, SUB.basis[0], torch.full_like(SUB.shift, math.nan)),
        ValueError,
        "v",
    ),
    "through equal": (
        lambda: Plane.through(SUB.shift, SUB.shift.clone(), SUB.shift + 1),
        ValueError,
        "w0 and w1",
    ),
    "through w2 shape": (
        lambda: Plane.through(SUB.shift, SUB.shift + 1, torch.zeros(3)),
        ValueError,
        "w2",
    ),
    "from_subspace": (lambda: Plane.from_subspace(POST), TypeError, "subspace"),  # type: ignore[arg-type]
    "coords theta": (lambda: PLANE.coords(torch.zeros(3)), ValueError, "theta"),
    "gaussian posterior": (lambda: PLANE.gaussian(SUB), TypeError, "posterior"),  # type: ignore[arg-type]
    "gaussian other layout": (
        lambda: PLANE.gaussian(collected_other()),
        ValueError,
        "posterior",
    ),
    "gaussian scale -1": (lambda: PLANE.gaussian(POST, scale=-1.0), ValueError, "scale"),
    "gaussian scale nan": (lambda: PLANE.gaussian(POST, scale=math.nan), ValueError, "scale"),
    "gaussian scale str": (lambda: PLANE.gaussian(POST, scale="1"), TypeError, "scale"),  # type: ignore[arg-type]
    # landscape: scans
    "eval thetas tensor": (
        lambda: evaluate_points(MODEL, LAYOUT, SUB.shift, LOADERS),
        TypeError,
        "thetas",
    ),
    "eval theta shape": (
        lambda: evaluate_points(MODEL, LAYOUT, [torch.zeros(3)], LOADERS),
        ValueError,
        "theta",
    ),
    "eval model": (lambda: evaluate_points("m", LAYOUT, [SUB.shift], LOADERS), TypeError, "model"),  # type: ignore[arg-type]
    "eval layout": (
        lambda: evaluate_points(MODEL, POST, [SUB.shift], LOADERS),  # type: ignore[arg-type]
        TypeError,
        "layout",
    ),
    "eval loaders list": (
        lambda: evaluate_points(MODEL, LAYOUT, [SUB.shift], BATCHES),  # type: ignore[arg-type]
        TypeError,
        "loaders",
    ),
    "eval loaders empty": (
        lambda: evaluate_points(MODEL, LAYOUT, [SUB.shift], {"train": []}),
        ValueError,
        "loaders['train']",
    ),
    "eval float targets": (
        lambda: evaluate_points(MODEL, LAYOUT, [SUB.shift], {"t": [(X, Y.float())]}),
        TypeError,
        "target",
    ),
    "eval (B, 1) targets": (
        lambda: evaluate_points(MODEL, LAYOUT, [SUB.shift], {"t": [(X, Y[:, None])]}),
        ValueError,
        "target",
    ),
    "eval bn_batches": (
        lambda: evaluate_points(
            MODEL,
            LAYOUT,
            [SUB.shift],
            LOADERS,
            options=swag.PredictOptions(bn=swag.BNRefresh([X], batches=0)),
        ),
        ValueError,
        "BNRefresh.batches",
    ),
    "eval target_fn": (
        lambda: evaluate_points(MODEL, LAYOUT, [SUB.shift], LOADERS, target_fn="y"),  # type: ignore[arg-type]
        TypeError,
        "target_fn",
    ),
    "line equal": (
        lambda: scan_line(MODEL, LAYOUT, SUB.shift, SUB.shift.clone(), LOADERS),
        ValueError,
        "start and end",
    ),
    "line ts nan": (
        lambda: scan_line(MODEL, LAYOUT, SUB.shift, SUB.shift + 1, LOADERS, ts=[0.0, math.nan]),
        ValueError,
        "ts",
    ),
    "line ts str": (
        lambda: scan_line(MODEL, LAYOUT, SUB.shift, SUB.shift + 1, LOADERS, ts="01"),  # type: ignore[arg-type]
        TypeError,
        "ts",
    ),
    "line unknown kwarg": (
        lambda: scan_line(MODEL, LAYOUT, SUB.shift, SUB.shift + 1, LOADERS, bn_loaders=[X]),
        TypeError,
        "bn_loaders",
    ),
    "plane plane": (
        lambda: scan_plane(MODEL, LAYOUT, SUB, LOADERS, as_=A, bs=A),  # type: ignore[arg-type]
        TypeError,
        "plane",
    ),
    "plane as_ short": (
        lambda: scan_plane(MODEL, LAYOUT, PLANE, LOADERS, as_=[0.0], bs=A),
        ValueError,
        "as_",
    ),
    "plane bs inf": (
        lambda: scan_plane(MODEL, LAYOUT, PLANE, LOADERS, as_=A, bs=[0.0, math.inf]),
        ValueError,
        "bs",
    ),
    # plots
    "line_plot ts nan": (lambda: loss_line([0.0, math.nan], A, A), ValueError, "ts"),
    "line_plot ts constant": (lambda: loss_line([1.0, 1.0], A, A), ValueError, "ts"),
    "line_plot loss inf": (lambda: loss_line(A, [0.0, math.inf], A), ValueError, "train_loss"),
    "line_plot error nan": (lambda: loss_line(A, A, [math.nan, 0.0]), ValueError, "test_error"),
    "line_plot ts str": (lambda: loss_line("ab", A, A), TypeError, "ts"),  # type: ignore[arg-type]
    "line_plot labels": (lambda: loss_line(A, A, A, labels=("a",)), TypeError, "labels"),  # type: ignore[arg-type]
    "line_plot ax": (lambda: loss_line(A, A, A, ax=3), TypeError, "ax"),  # type: ignore[arg-type]
    "plane_plot constant": (
        lambda: loss_plane(A, A, [[2.0, 2.0], [2.0, 2.0]]),
        ValueError,
        "values",
    ),
    "plane_plot nan": (
        lambda: loss_plane(A, A, [[1.0, math.nan], [2.0, 3.0]]),
        ValueError,
        "values",
    ),
    "plane_plot all nan": (lambda: loss_plane(A, A, np.full((2, 2), np.nan)), ValueError, "values"),
    "plane_plot inf": (
        lambda: loss_plane(A, A, [[1.0, math.inf], [2.0, 3.0]]),
        ValueError,
        "values",
    ),
    "plane_plot as_ constant": (lambda: loss_plane([1.0, 1.0], A, V), ValueError, "as_"),
    "plane_plot bs nan": (lambda: loss_plane(A, [0.0, math.nan], V), ValueError, "bs"),
    "plane_plot values str": (lambda: loss_plane(A, A, "values"), TypeError, "values"),  # type: ignore[arg-type]
    "plane_plot shape": (lambda: loss_plane(A, A, [[1.0, 2.0]]), ValueError, "values"),
    "plane_plot levels 0": (lambda: loss_plane(A, A, V, levels=0), ValueError, "levels"),
    "plane_plot levels 1": (lambda: loss_plane(A, A, V, levels=1), ValueError, "levels"),
    "plane_plot levels float": (lambda: loss_plane(A, A, V, levels=2.5), TypeError, "levels"),  # type: ignore[arg-type]
    "plane_plot levels bool": (lambda: loss_plane(A, A, V, levels=True), TypeError, "levels"),
    "plane_plot levels list": (lambda: loss_plane(A, A, V, levels=[1, 2]), TypeError, "levels"),  # type: ignore[arg-type]
    "plane_plot log": (lambda: loss_plane(A, A, V, log="yes"), TypeError, "log"),  # type: ignore[arg-type]
    "plane_plot label": (lambda: loss_plane(A, A, V, label=3), TypeError, "label"),  # type: ignore[arg-type]
    "plane_plot points": (lambda: loss_plane(A, A, V, points={"x": [0.0]}), ValueError, "points"),
    "plane_plot points list": (lambda: loss_plane(A, A, V, points=[0.0, 1.0]), TypeError, "points"),  # type: ignore[arg-type]
    "plane_plot gaussian": (
        lambda: loss_plane(A, A, V, gaussian=(torch.zeros(2), -torch.eye(2))),
        ValueError,
        "gaussian",
    ),
    "plane_plot gaussian nan": (
        lambda: loss_plane(A, A, V, gaussian=(torch.full((2,), math.nan), torch.eye(2))),
        ValueError,
        "gaussian",
    ),
    "plane_plot gaussian one": (
        lambda: loss_plane(A, A, V, gaussian=torch.eye(2)),  # type: ignore[arg-type]
        TypeError,
        "gaussian",
    ),
    "plane_plot ax": (lambda: loss_plane(A, A, V, ax="ax"), TypeError, "ax"),  # type: ignore[arg-type]
}


def collected_other() -> swag.SWAGPosterior:
    """A posterior of another model (other layout, other P)."""
    model = nn.Linear(2, 2)
    collector = swag.Collector(model, max_rank=2)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(0.1)
        collector.collect()
    return collector.posterior()


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_refused_naming_the_argument(case: str) -> None:
    call, exc, name = MISUSE[case]
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc, f"{case}: {type(info.value).__name__}: {info.value}"
    assert name in str(info.value), f"{case}: {info.value}"


PUBLIC = {
    "swag.subspace": {
        "Subspace",
        "SubspaceLikelihood",
        "SubspacePosterior",
        "ESSResult",
        "VIResult",
        "elliptical_slice",
        "fit_vi",
        "gaussian_kl",
    },
    "swag.landscape": {
        "Plane",
        "LineScan",
        "PlaneScan",
        "Loaders",
        "TargetFn",
        "evaluate_points",
        "scan_line",
        "scan_plane",
    },
}
"""The public names of the analysis modules; the table above covers every callable one."""

DATA_ONLY = {"ESSResult", "VIResult", "LineScan", "PlaneScan", "Loaders", "TargetFn"}


def test_the_misuse_table_covers_every_public_function() -> None:
    import swag.family.landscape as landscape
    import swag.family.subspace as subspace

    assert set(subspace.__all__) == PUBLIC["swag.subspace"]
    assert set(landscape.__all__) == PUBLIC["swag.landscape"]
    covered = " ".join(MISUSE).lower()
    prefixes = {
        "SubspaceLikelihood": "lik",
        "SubspacePosterior": "post",
        "Subspace": "pca",
        "elliptical_slice": "ess",
        "fit_vi": "vi",
        "Plane": "plane",
        "evaluate_points": "eval",
        "scan_line": "line",
        "scan_plane": "plane",
        "gaussian_kl": None,  # a formula over tensors, checked against torch below
    }
    for names in PUBLIC.values():
        for name in names - DATA_ONLY:
            assert name in prefixes, f"{name} is public but has no misuse cases"
            if prefixes[name] is not None:
                assert prefixes[name] in covered
    for plot in ("line_plot", "plane_plot"):
        assert plot in covered


# -- one-shot iterables -----------------------------------------------------------------------

ONE_SHOT: dict[str, Callable[[], object]] = {
    "swag.family.subspace.SubspaceLikelihood": lambda: SubspaceLikelihood(
        MODEL, SUB, once(BATCHES)
    ),
    "swag.family.landscape.evaluate_points": lambda: evaluate_points(
        MODEL, LAYOUT, [SUB.shift, SUB.shift + 1], {"train": once(BATCHES)}
    ),
    "swag.family.landscape.evaluate_points bn_loader": lambda: evaluate_points(
        MODEL,
        LAYOUT,
        [SUB.shift],
        LOADERS,
        options=swag.PredictOptions(bn=swag.BNRefresh(once([X]))),
    ),
    "swag.family.landscape.scan_line": lambda: scan_line(
        MODEL, LAYOUT, SUB.shift, SUB.shift + 1, {"train": once(BATCHES)}
    ),
    "swag.family.landscape.scan_line bn_loader": lambda: scan_line(
        MODEL,
        LAYOUT,
        SUB.shift,
        SUB.shift + 1,
        LOADERS,
        options=swag.PredictOptions(bn=swag.BNRefresh(iter([X]))),
    ),
    "swag.family.averaging.greedy_soup": lambda: greedy_soup(
        [POST, POST], MODEL, lambda m: 0.0, bn_loader=once([X])
    ),
    "swag.family.landscape.scan_plane": lambda: scan_plane(
        MODEL, LAYOUT, PLANE, {"test": map(tuple, BATCHES)}, as_=A, bs=A
    ),
}
"""Each public function that walks its batches more than once, given a one-shot iterable."""

ELSEWHERE = {
    "swag.evaluation.predict.predict": "refuses on its second pass (ValueError); owned by the core",
    "swag.evaluation.bn.update_bn": "one pass only: a one-shot iterable is fine",
    "swag.evaluation.fit_scale.fit_scale": (
        "owned by the core's helper (reported: a one-shot val_loader)"
    ),
    "swag.family.swap.SWAP.average": "one update_bn pass per call",
    "swag.integrations.transformers.predict": "wraps swag.predict",
}
"""Batch-taking public functions outside the analysis modules, and why they are not here."""


PARTS = {("swag", part) for part in ("core", "evaluation", "family", "persistence")}


def batch_taking_functions() -> set[str]:
    """Every public function or method in swag's public modules with a ``*loader*`` parameter.

    Read from the source with ``ast`` (importing the optional integrations would take seconds).
    """
    root = Path(swag.__file__).parent
    found = set()
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root.parent).with_suffix("").parts
        # a private module of a public subpackage (swag/subspace/_vi.py) is what the
        # subpackage exports; private modules of a part (swag/core/_checks.py) are helpers
        package, last = parts[:-1], parts[-1]
        private = any(p.startswith("_") for p in package) or len(package) < 2 or package in PARTS
        if last.startswith("_") and last != "__init__" and private:
            continue
        module = ".".join(package if last.startswith("_") else parts)
        tree = ast.parse(file.read_text())
        scopes: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
        scopes += [(f"{c.name}.", c.body) for c in tree.body if isinstance(c, ast.ClassDef)]
        for prefix, body in scopes:
            if prefix.startswith("_"):
                continue
            for fn in body:
                if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
                    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                    if any("loader" in a.arg for a in args):
                        found.add(f"{module}.{prefix}{fn.name}")
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__" and prefix:
                    args = fn.args.args + fn.args.kwonlyargs
                    if any("loader" in a.arg for a in args):
                        found.add(f"{module}.{prefix[:-1]}")
    return found


def test_every_batch_taking_function_is_audited() -> None:
    audited = {key.split(" ")[0] for key in ONE_SHOT} | set(ELSEWHERE)
    found = batch_taking_functions()
    assert found <= audited, f"new batch-taking functions, add them to ONE_SHOT: {found - audited}"
    assert audited <= found  # every entry is still a batch-taking function


@pytest.mark.parametrize("case", sorted(ONE_SHOT))
def test_a_one_shot_iterable_is_refused_by_name(case: str) -> None:
    with pytest.raises(TypeError, match=r"(loader|loaders\['\w+'\]) is a one-shot iterator"):
        ONE_SHOT[case]()


def test_the_fix_the_message_gives_works() -> None:
    # the same batches in a list are counted and evaluated: log p at z = 0 is the SWA model's
    lik = SubspaceLikelihood(MODEL, SUB, list(once(BATCHES)))
    assert lik.size == len(Y)
    swa = POST.to_model(MODEL)
    manual = -nn.functional.cross_entropy(swa(X), Y, reduction="sum").double()
    torch.testing.assert_close(lik(torch.zeros(2)), manual.detach(), rtol=1e-5, atol=1e-5)


# -- degenerate geometry, relative to the dtype's rounding ---------------------------------------


# -- NaN and inf never give a finite number -------------------------------------------------------


# -- SubspacePosterior refuses what SWAGPosterior.sample refuses, with the same message ---------

BAD_SAMPLES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"sample_shape": -1}, ValueError),
    ({"sample_shape": (2, -1)}, ValueError),
    ({"sample_shape": 1.5}, TypeError),
    ({"sample_shape": (2.0,)}, TypeError),
    ({"sample_shape": "3"}, TypeError),
    ({"sample_shape": True}, TypeError),
    ({"sample_shape": (None,)}, TypeError),
    ({"scale": "0.5"}, TypeError),
    ({"scale": math.nan}, ValueError),
    ({"scale": -1.0}, ValueError),
    ({"scale": math.inf}, ValueError),
    ({"scale": True}, TypeError),
    ({"scale": torch.tensor(0.5)}, TypeError),
    ({"diagonal": "yes"}, TypeError),
    ({"generator": 1}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "exc"), BAD_SAMPLES, ids=[repr(k) for k, _ in BAD_SAMPLES])
@pytest.mark.parametrize("post", [ESS_POST, VI_POST], ids=["ess", "vi"])
def test_subspace_posterior_refuses_like_swag(
    kwargs: dict[str, Any], exc: type[Exception], post: SubspacePosterior
) -> None:
    (arg,) = kwargs
    with pytest.raises(exc, match=arg) as want:
        POST.sample(**kwargs)
    with pytest.raises(exc) as got:
        post.sample(**kwargs)
    assert str(got.value) == str(want.value)


# -- scan_plane streams its grid: peak extra memory O(P), not O(grid · P) ----------------------
