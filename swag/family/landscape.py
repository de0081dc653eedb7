"""Loss surfaces: train loss and test error of a classifier along a line or over a plane.

The evaluations behind :func:`swag.plots.loss_line` and :func:`swag.plots.loss_plane`. Every
grid point is a flat weight vector written into one working copy of the model (the model
itself is never modified); its BatchNorm statistics are recomputed on ``options.bn`` first when
it has BatchNorm (:func:`swag.update_bn`), then each loader is evaluated in eval mode, batch by
batch: :func:`swag.predict`'s loop, with the same :class:`~swag.PredictOptions`. Cost: one
pass over every loader (plus the BN refresh) per point.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from swag.core._checks import check_callable, check_reiterable, check_scale
from swag.core.layout import ParamLayout
from swag.core.posterior import SWAGPosterior
from swag.evaluation._loop import Evaluator
from swag.evaluation._options import BNRefresh, PredictOptions, legacy_keywords
from swag.family.subspace import Subspace
from swag.family.subspace._likelihood import TargetFn, check_class_target, default_target_fn

__all__ = [
    "LineScan",
    "Loaders",
    "Plane",
    "PlaneScan",
    "TargetFn",
    "evaluate_points",
    "scan_line",
    "scan_plane",
]

Loaders = Mapping[str, Iterable[Any]]


ROUNDING = 100
"""Points or directions closer than ``ROUNDING`` · eps(dtype) · (their norms) count as equal or
parallel: within the rounding noise of the dtype they are stored in (float32 or float64)."""


def _tolerance(dtype: torch.dtype, *norms: float) -> float:
    """The rounding noise of vectors of ``dtype`` with these norms."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    return ROUNDING * eps * sum(norms)


def _vector(value: object, name: str, size: int | None = None) -> Tensor:
    """``value`` checked to be a finite floating 1-D tensor (of ``size`` entries if given)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a 1-D float tensor (P,), got {type(value).__name__}")
    if (
        value.dim() != 1
        or not value.is_floating_point()
        or (size is not None and len(value) != size)
    ):
        want = "(P,)" if size is None else f"({size},)"
        raise ValueError(
            f"{name} must be a 1-D float tensor {want}, got {value.dtype} {tuple(value.shape)}"
        )
    if not bool(value.isfinite().all()):
        raise ValueError(f"{name} must be finite, it holds NaN or inf entries")
    return value


@dataclass(frozen=True)
class Plane:
    """The plane θ = origin + a·u + b·v, with coordinates ``(a, b)``.

    Attributes:
        origin: ``(P,)``.
        u: ``(P,)`` first axis.
        v: ``(P,)`` second axis, not parallel to ``u``.

    Raises:
        TypeError: if ``origin``, ``u`` or ``v`` is not a tensor.
        ValueError: for shapes other than one ``(P,)``, non-finite entries, a zero axis, or
            axes parallel within the rounding of their dtype (see ``ROUNDING``; the test is
            on the sine of their angle, so it does not depend on their lengths).
    """

    origin: Tensor
    u: Tensor
    v: Tensor

    def __post_init__(self) -> None:
        size = len(_vector(self.origin, "origin"))
        u = _vector(self.u, "u", size).to(torch.float64)
        v = _vector(self.v, "v", size).to(torch.float64)
        nu, nv = float(u.norm()), float(v.norm())
        for name, norm in (("u", nu), ("v", nv)):
            if norm == 0:
                raise ValueError(f"{name} is zero; a plane needs two non-zero axes")
        sine = float((v - (v @ u) / (u @ u) * u).norm()) / nv
        if sine <= _tolerance(torch.promote_types(self.u.dtype, self.v.dtype), 1.0):
            raise ValueError(
                f"u and v are parallel (the sine of their angle is {sine:.3g}, within the "
                "rounding of their dtype): they do not span a plane; pass another direction v"
            )

    @classmethod
    def through(cls, w0: Tensor, w1: Tensor, w2: Tensor) -> Plane:
        """The plane through three weight vectors, w0 at (0, 0) and w1 at (1, 0).

        u = w1 − w0; v is the part of w2 − w0 orthogonal to u, so w2 sits at
        (⟨w2 − w0, u⟩/‖u‖², 1) and the picture's axes are orthogonal in weight space. Computed
        in float64 and returned in the points' dtype.

        Raises:
            ValueError: if two points are equal, or the three are collinear, within the
                rounding of their dtype: ``ROUNDING`` · eps · (‖w0‖ + ‖w1‖ + ‖w2‖), so float32
                points that are collinear up to float32 rounding are refused too. The message
                names the points.
        """
        size = len(_vector(w0, "w0"))
        points = [_vector(w, n, size) for w, n in ((w0, "w0"), (w1, "w1"), (w2, "w2"))]
        dtype = torch.promote_types(torch.promote_types(w0.dtype, w1.dtype), w2.dtype)
        p0, p1, p2 = (w.to(torch.float64) for w in points)
        tol = _tolerance(dtype, *(float(p.norm()) for p in (p0, p1, p2)))
        for (i, a), (j, b) in ((0, p0), (1, p1)), ((0, p0), (2, p2)), ((1, p1), (2, p2)):
            if float((b - a).norm()) <= tol:
                raise ValueError(
                    f"w{i} and w{j} are equal (‖w{j} − w{i}‖ = {float((b - a).norm()):.3g}, "
                    f"within {dtype} rounding): three distinct points are needed for a plane"
                )
        u, d = p1 - p0, p2 - p0
        v = d - (d @ u) / (u @ u) * u
        if float(v.norm()) <= tol:
            raise ValueError(
                f"w0, w1 and w2 are collinear (w2 − w0 is {float(v.norm()):.3g} off the line "
                f"through w0 and w1, within {dtype} rounding): they do not span a plane"
            )
        return cls(w0, u.to(dtype), v.to(dtype))

    @classmethod
    def from_subspace(cls, subspace: Subspace) -> Plane:
        """θ̂ + a·b₁ + b·b₂: the first two directions of a (PCA) subspace; (a, b) = (z₁, z₂)."""
        if not isinstance(subspace, Subspace):
            raise TypeError(
                f"subspace must be a swag.subspace.Subspace, got {type(subspace).__name__}"
            )
        if subspace.dim < 2:
            raise ValueError(f"the subspace has {subspace.dim} direction(s); a plane needs 2")
        return cls(subspace.shift, subspace.basis[0], subspace.basis[1])

    def point(self, a: float, b: float) -> Tensor:
        """The weights at ``(a, b)``, ``(P,)``."""
        return self.origin + a * self.u + b * self.v

    def coords(self, theta: Tensor) -> Tensor:
        """Least-squares coordinates ``(2,)`` of ``theta`` ``(P,)`` in the plane."""
        _vector(theta, "theta", len(self.origin))
        e = torch.stack([self.u, self.v]).to(torch.float64)
        rhs = e @ (theta - self.origin).to(torch.float64)
        out: Tensor = torch.linalg.solve(e @ e.T, rhs)
        return out

    def gaussian(
        self, posterior: SWAGPosterior, *, scale: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """The SWAG Gaussian's marginal over the plane coordinates: centre ``(2,)``, cov ``(2, 2)``.

        With A = (EEᵀ)⁻¹E (E = [u; v]), the coordinates of θ ~ N(θ̄, Σ) are N(A(θ̄ − origin),
        AΣAᵀ), Σ = scale · (diag σ² + D̂ᵀD̂/(K − 1)) (without the low-rank term for the
        diagonal view). ``scale=None`` is the posterior's default (0.5, or 1.0 diagonal).
        Computed in O(KP) float64, no P × P matrix.

        Raises:
            TypeError: for a posterior that is not a single Gaussian (a mixture or subspace
                posterior: scan its members one by one).
            ValueError: if ``posterior`` covers another number of parameters than the plane,
                or ``scale`` is negative, NaN or infinite (as for ``SWAGPosterior.sample``).
        """
        if not isinstance(posterior, SWAGPosterior):
            raise TypeError(
                "posterior must be a SWAGPosterior for Plane.gaussian, got "
                f"{type(posterior).__name__}: it has no single Gaussian here; for a MultiSWAG, "
                "call it on each of .components, for a ShardedPosterior on its .full()"
            )
        factor = check_scale(scale, posterior.diagonal_only)
        if posterior.layout.size != len(self.origin):
            raise ValueError(
                f"posterior covers {posterior.layout.size} parameters but the plane lives in "
                f"{len(self.origin)}: pass the posterior of the model the plane was built from"
            )
        e = torch.stack([self.u, self.v]).to(torch.float64)
        a = torch.linalg.solve(e @ e.T, e)
        centre = a @ (posterior.mean.to(torch.float64) - self.origin.to(torch.float64))
        cov = (a * posterior.variance.to(torch.float64)) @ a.T
        if posterior.rank >= 2 and not posterior.diagonal_only:
            ad = a @ posterior.deviations.to(torch.float64).T
            cov = cov + ad @ ad.T / (posterior.rank - 1)
        return centre, factor * cov


@dataclass(frozen=True)
class LineScan:
    """Metrics along θ(t) = (1 − t)·start + t·end: ``metrics[name]`` is ``(len(ts),)``."""

    ts: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class PlaneScan:
    """Metrics on a grid of the plane: ``metrics[name]`` is ``(len(bs), len(as_))``."""

    plane: Plane
    as_: Tensor
    bs: Tensor
    metrics: dict[str, Tensor]


@legacy_keywords("bn_loader", "bn_batches", "input_fn", "device", "progress")
def evaluate_points(
    model: nn.Module,
    layout: ParamLayout,
    thetas: Sequence[Tensor],
    loaders: Loaders,
    *,
    options: PredictOptions | None = None,
    target_fn: TargetFn | None = None,
) -> dict[str, Tensor]:
    """Cross-entropy loss and error rate of each weight vector on each loader.

    Each point runs :func:`swag.predict`'s loop: its weights written into one working copy,
    BatchNorm refreshed on ``options.bn``, each loader walked in eval mode with
    ``options.input_fn`` (dict batches are keyword arguments, ``model(**batch)``).

    Args:
        model: a classifier returning logits ``(B, C)``.
        layout: which parameters the flat vectors ``(P,)`` of ``thetas`` are.
        thetas: the weight vectors.
        loaders: named loaders of ``(x, y)`` batches, e.g. ``{"train": ..., "test": ...}``;
            each is walked once per point, so it must be re-iterable (a list or a
            ``DataLoader``, not a generator).
        options: :class:`~swag.PredictOptions` as for :func:`swag.predict`: ``bn``
            (:class:`~swag.BNRefresh` of re-iterable training batches, required for a model
            with BatchNorm), ``input_fn``, ``device`` (default: the model's device),
            ``progress`` (a bar over points), ``mc_dropout``; ``reduce`` must be True.
        target_fn: batch → integer class targets ``(B,)`` (default: the second item).

    Returns:
        ``{f"{name}_loss": (N,), f"{name}_error": (N,)}``: mean cross-entropy (nats) and the
        fraction misclassified, per point, in float64. A point whose logits hold NaN or +inf
        anywhere (NaN or overflowing weights) gets NaN for both, never a finite number.

    Raises:
        TypeError: for a one-shot iterator as a loader, or arguments of the wrong type.
        ValueError: for a BatchNorm model without ``options.bn``, a ``theta`` of another
            shape, targets that are not integer ``(B,)`` class indices, or a loader with no
            example.
    """
    given: object = thetas
    if isinstance(given, (Tensor, str)) or not isinstance(given, Sequence):
        raise TypeError(
            f"thetas must be a sequence of (P,) weight vectors, got {type(thetas).__name__}"
        )
    return _evaluate(
        model, layout, iter(thetas), len(thetas), loaders, options=options, target_fn=target_fn
    )


def _evaluate(
    model: nn.Module,
    layout: ParamLayout,
    thetas: Iterable[Tensor],
    count: int,
    loaders: Loaders,
    *,
    options: PredictOptions | None,
    target_fn: TargetFn | None,
) -> dict[str, Tensor]:
    """:func:`evaluate_points` over ``count`` points drawn one at a time from ``thetas``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a swag.ParamLayout, got {type(layout).__name__}")
    if not isinstance(loaders, Mapping) or not loaders:
        raise TypeError(
            "loaders must be a non-empty mapping of names to loaders, e.g. {'train': loader}, "
            f"got {type(loaders).__name__}"
        )
    for name, loader in loaders.items():
        if not isinstance(name, str):
            raise TypeError(f"loaders must be keyed by strings, got the key {name!r}")
        check_reiterable(loader, f"loaders[{name!r}]")
    options = options or PredictOptions()
    if not isinstance(options, PredictOptions):
        raise TypeError(f"options must be a swag.PredictOptions, got {type(options).__name__}")
    if isinstance(options.bn, BNRefresh):
        check_reiterable(options.bn.loader, "BNRefresh.loader")
    if not options.reduce:
        raise ValueError("evaluate_points scores each point: options.reduce must be True")
    check_callable(target_fn, "target_fn")
    layout.resolve(model)
    if options.device is None:
        options = dataclasses.replace(options, device=next(model.parameters()).device)
    evaluator = Evaluator(model, options)
    dev = next(evaluator.work.parameters()).device
    to_target = target_fn or default_target_fn
    out = {
        f"{n}_{m}": torch.zeros(count, dtype=torch.float64)
        for n in loaders
        for m in ("loss", "error")
    }
    points = tqdm(thetas, total=count, desc="loss surface", disable=not options.progress)
    for i, theta in enumerate(points):
        evaluator.load(functools.partial(layout.scatter, theta.to(dev)))
        with torch.no_grad():
            for name, loader in loaders.items():
                loss, wrong, examples, broken = 0.0, 0, 0, False
                for batch, logits in evaluator.outputs(loader):
                    target = to_target(batch).to(logits.device)
                    check_class_target(logits, target)
                    broken = broken or bool((logits.isnan() | logits.isposinf()).any())
                    loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
                    wrong += int((logits.argmax(-1) != target).sum())
                    examples += len(target)
                if examples == 0:
                    raise ValueError(f"loaders[{name!r}] yielded no example")
                nan = float("nan")
                out[f"{name}_loss"][i] = nan if broken else loss / examples
                out[f"{name}_error"][i] = nan if broken else wrong / examples
    return out


def _check_line(start: object, end: object) -> None:
    """Refuse a line through two points that are equal within the rounding of their dtype."""
    p0 = _vector(start, "start")
    p1 = _vector(end, "end", len(p0))
    a, b = p0.to(torch.float64), p1.to(torch.float64)
    gap = float((b - a).norm())
    dtype = torch.promote_types(p0.dtype, p1.dtype)
    if gap <= _tolerance(dtype, float(a.norm()), float(b.norm())):
        raise ValueError(
            f"start and end are equal (‖end − start‖ = {gap:.3g}, within {dtype} rounding): "
            "a line needs two distinct points"
        )


def _grid(values: object, name: str, dtype: torch.dtype) -> Tensor:
    """``values`` as a 1-D tensor of at least 2 finite numbers."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {values!r}")
    try:
        t = torch.as_tensor(values, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {values!r}") from None
    if t.dim() != 1 or len(t) < 2 or not bool(t.isfinite().all()):
        raise ValueError(
            f"{name} must be a 1-D sequence of at least 2 finite values, got {values!r}"
        )
    return t


@legacy_keywords("bn_loader", "bn_batches", "input_fn", "device", "progress")
def scan_line(
    model: nn.Module,
    layout: ParamLayout,
    start: Tensor,
    end: Tensor,
    loaders: Loaders,
    *,
    ts: Sequence[float] | Tensor | None = None,
    **kwargs: Any,
) -> LineScan:
    """:func:`evaluate_points` at (1 − t)·start + t·end per t (default: 21 t from −0.5 to 1.5).

    The points are made one at a time (extra memory O(P)). ``start`` and ``end`` must differ by
    more than the rounding of their dtype (ValueError naming them otherwise).
    """
    _check_line(start, end)
    t = torch.linspace(-0.5, 1.5, 21) if ts is None else _grid(ts, "ts", torch.float32)
    thetas = (torch.lerp(start, end, float(x)) for x in t)
    return LineScan(t, _evaluate(model, layout, thetas, len(t), loaders, **_options(kwargs)))


@legacy_keywords("bn_loader", "bn_batches", "input_fn", "device", "progress")
def scan_plane(
    model: nn.Module,
    layout: ParamLayout,
    plane: Plane,
    loaders: Loaders,
    *,
    as_: Sequence[float] | Tensor,
    bs: Sequence[float] | Tensor,
    **kwargs: Any,
) -> PlaneScan:
    """:func:`evaluate_points` on the grid ``plane.point(a, b)``, a ∈ ``as_``, b ∈ ``bs``.

    The grid points are made one at a time as they are evaluated, so the extra memory is O(P)
    (the working copy of the model and one point), not O(len(as_) · len(bs) · P).
    """
    if not isinstance(plane, Plane):
        raise TypeError(f"plane must be a swag.landscape.Plane, got {type(plane).__name__}")
    a, b = _grid(as_, "as_", torch.float64), _grid(bs, "bs", torch.float64)
    thetas = (plane.point(float(y), float(x)) for x in b for y in a)
    flat = _evaluate(model, layout, thetas, len(a) * len(b), loaders, **_options(kwargs))
    return PlaneScan(plane, a, b, {k: v.view(len(b), len(a)) for k, v in flat.items()})


_OPTIONS = ("options", "target_fn")


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_points`, with their defaults; others refused."""
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; accepted: {list(_OPTIONS)}")
    return {name: kwargs.get(name) for name in _OPTIONS}
