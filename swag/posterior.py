"""The SWAG Gaussian posterior (diagonal plus low rank) and the posterior protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.distributions import LowRankMultivariateNormal

from swag import _io
from swag._checks import SampleShape as SampleShape
from swag._checks import check_scale
from swag._gaussian import draw, lowrank_coef
from swag._params import working_copy
from swag.layout import ParamLayout

__all__ = ["Posterior", "PosteriorMixin", "SWAGPosterior", "SampleShape"]

_KIND = "swag_posterior"


@runtime_checkable
class Posterior(Protocol):
    """What every posterior offers: a mean, flat samples, and a way into a model.

    ``sample`` returns flat parameter vectors of shape ``(*sample_shape, P)`` in
    ``layout`` order; ``apply_`` writes one into a model in place. Every posterior accepts
    ``scale`` and ``diagonal`` (a zero-variance one ignores them), so one prediction routine
    serves them all. swag's callers (:func:`swag.predict`, :class:`~swag.MultiSWAG`) always
    pass ``scale`` as a float, the mode's default (0.5 full, 1.0 diagonal) already resolved;
    swag's own posteriors also take ``scale=None`` for that default.
    """

    @property
    def layout(self) -> ParamLayout: ...

    @property
    def mean(self) -> Tensor: ...

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float = ...,
        diagonal: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...

    def apply_(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module: ...


class PosteriorMixin:
    """Writing flat vectors into models, shared by every posterior."""

    layout: ParamLayout
    mean: Tensor

    def apply_(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """Write ``theta`` ``(P,)`` (default: the mean) into ``model``'s covered parameters."""
        self.layout.scatter(self.mean if theta is None else theta, model)
        return model

    def to_model(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """A deep copy of ``model`` holding ``theta`` (default: the mean, e.g. the SWA model)."""
        return self.apply_(working_copy(model), theta)


@dataclass(frozen=True, eq=False)
class SWAGPosterior(PosteriorMixin):
    """N(θ̄, scale · (diag σ² + D̂ᵀD̂ / (K − 1))), the SWAG posterior over the covered parameters.

    Attributes:
        mean: θ̄ ``(P,)``, the SWA solution.
        std: σ ``(P,)``, the diagonal standard deviation (σ² = the iterates' variance).
        deviations: D̂ ``(K, P)``, the last K deviations θ_i − θ̄_i, oldest first.
        layout: which model parameters the P entries are.
        n: how many iterates were averaged.
    """

    mean: Tensor
    std: Tensor
    deviations: Tensor
    layout: ParamLayout
    n: int

    def __post_init__(self) -> None:
        size = self.layout.size
        if self.mean.shape != (size,) or self.std.shape != (size,):
            raise ValueError(
                f"mean and std must have shape ({size},) to match the layout, got "
                f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if self.deviations.dim() != 2 or self.deviations.shape[1] != size:
            raise ValueError(
                f"deviations must have shape (K, {size}), got {tuple(self.deviations.shape)}"
            )
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def rank(self) -> int:
        """K, the number of deviations held."""
        return self.deviations.shape[0]

    @property
    def variance(self) -> Tensor:
        """σ² ``(P,)``."""
        var: Tensor = self.std.square()
        return var

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float | None = None,
        diagonal: bool = False,
        blockwise: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw θ ~ N(θ̄, scale · (diag σ² + D̂ᵀD̂ / (K − 1))).

        θ = θ̄ + √scale · (σ ⊙ z₁ + D̂ᵀ z₂ / √(K − 1)), z₁ ~ N(0, I_P), z₂ ~ N(0, I_K).

        At ``scale=0.5`` this is the SWAG paper's θ̄ + Σ_diag^½ z₁/√2 + D̂ z₂/√(2(K − 1)), and
        ``scale`` means what it means in swa_gaussian's ``SWAG.sample(scale, cov=True)``. With
        ``diagonal=True`` (SWAG-Diag; the paper uses scale 1 there, the default in that mode) or
        fewer than two deviations the low-rank term is dropped. With ``blockwise=True`` each
        parameter tensor gets its own z₂, so the covariance's low-rank part is block-diagonal
        over parameter tensors.

        Args:
            sample_shape: leading shape of the result: an int or a sequence of ints >= 0
                (numpy integers are fine).
            scale: the covariance multiplier, finite and >= 0 (0 gives the mean). Default
                None: 0.5 (the paper's SWAG), or 1.0 with ``diagonal=True`` (the paper's
                SWAG-Diag).
            diagonal: drop the low-rank term (SWAG-Diag).
            blockwise: one z₂ per parameter tensor.
            generator: a ``torch.Generator`` on this posterior's device, for reproducible draws
                (z₂ is drawn before z₁).

        Returns:
            ``(*sample_shape, P)`` flat parameter vectors.

        Raises:
            ValueError: for a NaN, infinite or negative ``scale``, or a negative size in
                ``sample_shape``.
            TypeError: for a ``scale`` or ``sample_shape`` that is not a number / an integer.
        """
        spans = list(zip(self.layout.offsets, self.layout.numels, strict=True))
        return draw(
            self.mean,
            self.std,
            self.deviations,
            sample_shape,
            self.layout.size,
            spans,
            scale=scale,
            diagonal=diagonal,
            blockwise=blockwise,
            generator=generator,
            take=None,
        )

    def to_distribution(
        self, *, scale: float | None = None, diagonal: bool = False
    ) -> LowRankMultivariateNormal:
        """The same Gaussian as :meth:`sample` (not ``blockwise``), as a torch distribution.

        ``scale`` and its default are as in :meth:`sample`, except that 0 is refused: the
        distribution would be a point mass at the mean, which has no density.

        Raises:
            ValueError: for a NaN, infinite, negative or zero ``scale``; if some σ is 0
                (rebuild the posterior with ``min_variance > 0``); if ``scale · σ²`` under- or
                overflows the statistics' dtype; or if the covariance is too ill-conditioned
                to factor in that dtype (the message says how to fix each).
        """
        scale = check_scale(scale, diagonal)
        if scale == 0:
            raise ValueError(
                "scale must be > 0 for a proper distribution, got 0: N(mean, 0) is a point mass "
                "at the mean with no density (sample(scale=0) gives the mean)"
            )
        if not bool((self.std > 0).all()):
            raise ValueError(
                "some variances are 0, so the covariance is singular; "
                "build the posterior with Collector.posterior(min_variance=1e-30) or larger"
            )
        cov_diag = scale * self.variance
        if not bool(((cov_diag > 0) & torch.isfinite(cov_diag)).all()):
            raise ValueError(
                f"scale={scale!r} times the variances under- or overflows {self.mean.dtype} "
                "(some scale·σ² is 0 or inf); pick a scale nearer 1 or convert the posterior "
                "with .to(dtype=torch.float64)"
            )
        coef = lowrank_coef(self.rank, diagonal)
        if coef:
            factor = self.deviations.t().to(self.mean.dtype) * (math.sqrt(scale) * coef)
        else:
            factor = self.mean.new_zeros(self.layout.size, 1)
        try:
            dist = LowRankMultivariateNormal(self.mean, factor, cov_diag)
            tril = getattr(dist, "_capacitance_tril", None)  # Cholesky of I + Wᵀ D⁻¹ W (K × K)
            healthy = tril is None or bool(torch.isfinite(tril).all())
        except RuntimeError:  # torch.linalg.LinAlgError: that factorisation failed
            healthy = False
        if not healthy:
            raise ValueError(
                "the covariance diag(scale·σ²) + low rank is too ill-conditioned to factor in "
                f"{self.mean.dtype} (σ tiny next to the deviations); convert the posterior with "
                ".to(dtype=torch.float64), build it with a larger min_variance, or pass "
                "diagonal=True"
            )
        return dist

    def log_prob(
        self, theta: Tensor, *, scale: float | None = None, diagonal: bool = False
    ) -> Tensor:
        """Log density of ``theta`` ``(..., P)`` under the posterior, in nats; shape ``(...)``.

        ``scale`` and ``diagonal`` are as in :meth:`to_distribution`.

        Raises:
            TypeError: if ``theta`` is not a floating-point tensor.
            ValueError: if its last dimension is not P, if the density overflows the
                statistics' dtype (NaN for a finite ``theta``), or as :meth:`to_distribution`.
        """
        if not isinstance(theta, Tensor) or not theta.is_floating_point():
            raise TypeError(
                "theta must be a floating-point tensor of shape (..., P), got "
                + (f"dtype {theta.dtype}" if isinstance(theta, Tensor) else type(theta).__name__)
            )
        if theta.dim() == 0 or theta.shape[-1] != self.layout.size:
            raise ValueError(
                f"theta must have shape (..., {self.layout.size}), got {tuple(theta.shape)}"
            )
        dist = self.to_distribution(scale=scale, diagonal=diagonal)
        theta = theta.to(self.mean.dtype)
        log_p: Tensor = dist.log_prob(theta)  # type: ignore[no-untyped-call]
        if bool((torch.isnan(log_p) & torch.isfinite(theta).all(-1)).any()):
            raise ValueError(
                f"log_prob overflowed in {self.mean.dtype} (a Mahalanobis term beyond its "
                "range: σ tiny next to θ − θ̄ or the deviations); convert the posterior with "
                ".to(dtype=torch.float64) or build it with a larger min_variance"
            )
        return log_p

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SWAGPosterior:
        """A copy on another device and/or floating dtype."""
        return SWAGPosterior(
            self.mean.to(device, dtype),
            self.std.to(device, dtype),
            self.deviations.to(device, dtype),
            self.layout,
            self.n,
        )

    def save(self, path: _io.PathLike) -> None:
        """Write the posterior to ``path`` (safetensors, atomic)."""
        _io.save_file(path, _KIND, *self._to_tensors())

    @classmethod
    def load(cls, path: _io.PathLike, *, device: torch.device | str | None = None) -> SWAGPosterior:
        """Read a posterior written by :meth:`save`.

        Raises:
            ValueError: if the file is damaged, foreign, or inconsistent with its layout.
        """
        return cls._from_tensors(*_io.load_file(path, _KIND, device), path)

    def _to_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and string metadata :meth:`save` writes (``MultiSWAG`` reuses them)."""
        return (
            {"mean": self.mean, "std": self.std, "deviations": self.deviations},
            {"layout": self.layout.to_json(), "n": str(self.n)},
        )

    @classmethod
    def _from_tensors(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: _io.PathLike
    ) -> SWAGPosterior:
        """Rebuild from :meth:`_to_tensors`'s output; ``where`` names the source in errors."""
        layout = _io.layout_field(meta, "layout", where)
        n = _io.int_field(meta, "n", where, low=1)
        _io.expect_tensors(tensors, ("mean", "std", "deviations"), where)
        size, floats = layout.size, _io.FLOAT_DTYPES.values()
        mean = _io.tensor_field(tensors, "mean", where, (size,), floats)
        std = _io.tensor_field(tensors, "std", where, (size,), (mean.dtype,))
        deviations = tensors.get("deviations")
        k = deviations.shape[0] if deviations is not None and deviations.dim() == 2 else 0
        deviations = _io.tensor_field(tensors, "deviations", where, (k, size), floats)
        if not bool((std >= 0).all()):
            raise ValueError(f"{where}: tensor 'std' has negative or NaN entries")
        return cls(mean=mean, std=std, deviations=deviations, layout=layout, n=n)
