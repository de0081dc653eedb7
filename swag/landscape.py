"""Loss surfaces: train loss and test error of a classifier along a line or over a plane.

The evaluations behind :func:`swag.plots.loss_line` and :func:`swag.plots.loss_plane`. Every
grid point is a flat weight vector written into one working copy of the model (the model
itself is never modified); its BatchNorm statistics are recomputed on ``bn_loader`` first when
it has BatchNorm (:func:`swag.update_bn`), then each loader is evaluated in eval mode, batch by
batch. Cost: one pass over every loader (plus the BN refresh) per point.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import swag
from swag._checks import check_scale
from swag.bn import InputFn, default_input_fn, has_batchnorm
from swag.subspace import Subspace
from swag.subspace._likelihood import TargetFn, default_target_fn, to_device

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


@dataclass(frozen=True)
class Plane:
    """The plane θ = origin + a·u + b·v, with coordinates ``(a, b)``.

    Attributes:
        origin: ``(P,)``.
        u: ``(P,)`` first axis.
        v: ``(P,)`` second axis, not parallel to ``u``.
    """

    origin: Tensor
    u: Tensor
    v: Tensor

    @classmethod
    def through(cls, w0: Tensor, w1: Tensor, w2: Tensor) -> Plane:
        """The plane through three weight vectors, w0 at (0, 0) and w1 at (1, 0).

        u = w1 − w0; v is the part of w2 − w0 orthogonal to u, so w2 sits at
        (⟨w2 − w0, u⟩/‖u‖², 1) and the picture's axes are orthogonal in weight space.
        """
        u = w1 - w0
        d = w2 - w0
        v = d - (d @ u) / (u @ u) * u
        if float(v.norm()) <= 1e-12 * float(d.norm() + u.norm()):
            raise ValueError("w0, w1 and w2 are collinear: they do not span a plane")
        return cls(w0, u, v)

    @classmethod
    def from_subspace(cls, subspace: Subspace) -> Plane:
        """θ̂ + a·b₁ + b·b₂: the first two directions of a (PCA) subspace; (a, b) = (z₁, z₂)."""
        if subspace.dim < 2:
            raise ValueError(f"the subspace has {subspace.dim} direction(s); a plane needs 2")
        return cls(subspace.shift, subspace.basis[0], subspace.basis[1])

    def point(self, a: float, b: float) -> Tensor:
        """The weights at ``(a, b)``, ``(P,)``."""
        return self.origin + a * self.u + b * self.v

    def coords(self, theta: Tensor) -> Tensor:
        """Least-squares coordinates ``(2,)`` of ``theta`` ``(P,)`` in the plane."""
        e = torch.stack([self.u, self.v]).to(torch.float64)
        rhs = e @ (theta - self.origin).to(torch.float64)
        out: Tensor = torch.linalg.solve(e @ e.T, rhs)
        return out

    def gaussian(
        self, posterior: swag.SWAGPosterior, *, scale: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """The SWAG Gaussian's marginal over the plane coordinates: centre ``(2,)``, cov ``(2, 2)``.

        With A = (EEᵀ)⁻¹E (E = [u; v]), the coordinates of θ ~ N(θ̄, Σ) are N(A(θ̄ − origin),
        AΣAᵀ), Σ = scale · (diag σ² + D̂ᵀD̂/(K − 1)) (without the low-rank term for the
        diagonal view). ``scale=None`` is the posterior's default (0.5, or 1.0 diagonal).
        Computed in O(KP) float64, no P × P matrix.

        Raises:
            TypeError: for a posterior that is not a single Gaussian (a mixture or subspace
                posterior: scan its members one by one).
        """
        if not isinstance(posterior, swag.SWAGPosterior):
            raise TypeError(
                f"Plane.gaussian takes a SWAGPosterior, got {type(posterior).__name__}: it has no "
                "single Gaussian here; for a MultiSWAG, call it on each of .components, for a "
                "ShardedPosterior on its .full()"
            )
        scale = check_scale(scale, posterior.diagonal_only)
        e = torch.stack([self.u, self.v]).to(torch.float64)
        a = torch.linalg.solve(e @ e.T, e)
        centre = a @ (posterior.mean - self.origin).to(torch.float64)
        cov = (a * posterior.variance.to(torch.float64)) @ a.T
        if posterior.rank >= 2 and not posterior.diagonal_only:
            ad = a @ posterior.deviations.to(torch.float64).T
            cov = cov + ad @ ad.T / (posterior.rank - 1)
        return centre, scale * cov


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


def evaluate_points(
    model: nn.Module,
    layout: swag.ParamLayout,
    thetas: Sequence[Tensor],
    loaders: Loaders,
    *,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = None,
    input_fn: InputFn | None = None,
    target_fn: TargetFn | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Cross-entropy loss and error rate of each weight vector on each loader.

    Args:
        model: a classifier returning logits ``(B, C)``.
        layout: which parameters the flat vectors ``(P,)`` of ``thetas`` are.
        thetas: the weight vectors.
        loaders: named loaders of ``(x, y)`` batches, e.g. ``{"train": ..., "test": ...}``.
        bn_loader: training batches for the BatchNorm refresh; required for a model with BN.
        bn_batches: refresh on the first ``bn_batches`` batches only.
        input_fn: batch → model input (default: the first item).
        target_fn: batch → target (default: the second item).
        device: where to evaluate (default: the model's device).
        progress: show a progress bar over points.

    Returns:
        ``{f"{name}_loss": (N,), f"{name}_error": (N,)}``: mean cross-entropy (nats) and the
        fraction misclassified, per point, in float64.
    """
    work = copy.deepcopy(model)
    if device is not None:
        work.to(device)
    dev = next(work.parameters()).device
    if has_batchnorm(work) and bn_loader is None:
        raise ValueError("the model has BatchNorm: pass bn_loader= (training batches)")
    to_input, to_target = input_fn or default_input_fn, target_fn or default_target_fn
    out = {
        f"{n}_{m}": torch.zeros(len(thetas), dtype=torch.float64)
        for n in loaders
        for m in ("loss", "error")
    }
    for i, theta in enumerate(tqdm(thetas, desc="loss surface", disable=not progress)):
        layout.scatter(theta.to(dev), work)
        if bn_loader is not None:
            swag.update_bn(bn_loader, work, num_batches=bn_batches, input_fn=input_fn, device=dev)
        work.eval()
        with torch.no_grad():
            for name, loader in loaders.items():
                loss, wrong, count = 0.0, 0, 0
                for batch in loader:
                    inputs, target = to_device(to_input(batch), dev), to_target(batch).to(dev)
                    logits = work(inputs)
                    loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
                    wrong += int((logits.argmax(-1) != target).sum())
                    count += len(target)
                if count == 0:
                    raise ValueError(f"loader {name!r} yielded no example")
                out[f"{name}_loss"][i] = loss / count
                out[f"{name}_error"][i] = wrong / count
    return out


def scan_line(
    model: nn.Module,
    layout: swag.ParamLayout,
    start: Tensor,
    end: Tensor,
    loaders: Loaders,
    *,
    ts: Sequence[float] | Tensor | None = None,
    **kwargs: Any,
) -> LineScan:
    """:func:`evaluate_points` at (1 − t)·start + t·end per t (default: 21 t from −0.5 to 1.5)."""
    t = torch.linspace(-0.5, 1.5, 21) if ts is None else torch.as_tensor(ts, dtype=torch.float32)
    if t.dim() != 1 or len(t) < 2 or not bool(t.isfinite().all()):
        raise ValueError(f"ts must be a 1-D sequence of at least 2 finite values, got {ts!r}")
    thetas = [torch.lerp(start, end, float(x)) for x in t]
    return LineScan(t, evaluate_points(model, layout, thetas, loaders, **kwargs))


def scan_plane(
    model: nn.Module,
    layout: swag.ParamLayout,
    plane: Plane,
    loaders: Loaders,
    *,
    as_: Sequence[float] | Tensor,
    bs: Sequence[float] | Tensor,
    **kwargs: Any,
) -> PlaneScan:
    """:func:`evaluate_points` on the grid ``plane.point(a, b)``, a ∈ ``as_``, b ∈ ``bs``."""
    a, b = torch.as_tensor(as_, dtype=torch.float64), torch.as_tensor(bs, dtype=torch.float64)
    if a.dim() != 1 or b.dim() != 1 or min(len(a), len(b)) < 2:
        raise ValueError("as_ and bs must be 1-D with at least 2 values each")
    thetas = [plane.point(float(y), float(x)) for x in b for y in a]
    flat = evaluate_points(model, layout, thetas, loaders, **kwargs)
    return PlaneScan(plane, a, b, {k: v.view(len(b), len(a)) for k, v in flat.items()})
