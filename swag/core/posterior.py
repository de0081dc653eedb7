"""The SWAG Gaussian posterior (diagonal plus low rank)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import LowRankMultivariateNormal

from swag.core._checks import SampleShape as SampleShape
from swag.core._checks import check_bool, check_scale
from swag.core._gaussian import draw, lowrank_coef
from swag.core._initdoc import document_init
from swag.core._posterior_base import Density, Posterior, State
from swag.core.layout import ParamLayout
from swag.core.point import PointPosterior
from swag.persistence import _io

__all__ = ["Posterior", "SWAGPosterior", "SampleShape"]

_KIND = "swag_posterior"


@document_init
@dataclass(frozen=True, eq=False)
class SWAGPosterior(Density, Posterior):
    """N(θ̄, scale · (diag σ² + D̂ᵀD̂ / (K − 1))), the SWAG posterior over the covered parameters.

    Attributes:
        mean: θ̄ ``(P,)``, the SWA solution.
        std: σ ``(P,)``, the diagonal standard deviation (σ² = the iterates' variance).
        deviations: D̂ ``(K, P)``, the last K deviations θ_i − θ̄_i, oldest first.
        layout: which model parameters the P entries are.
        n: how many iterates were averaged.
        diagonal_only: this is the SWAG-Diag view (:meth:`diagonal`): the low-rank term is
            dropped and the default scale is 1.0.
    """

    kind = _KIND
    mean: Tensor
    std: Tensor
    deviations: Tensor
    layout: ParamLayout
    n: int
    diagonal_only: bool = False

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
        check_bool(self.diagonal_only, "diagonal_only")

    def diagonal(self) -> SWAGPosterior:
        """SWAG-Diag: the same posterior without its low-rank term, default scale 1.0."""
        return dataclasses.replace(self, diagonal_only=True)

    def swa(self) -> PointPosterior:
        """The SWA solution θ̄ alone, as a point posterior (it shares ``mean``, no copy).

        ``swag.predict(posterior.swa(), model, loader, options=...)`` is SWA prediction in one
        call: one pass of the network at θ̄, its BatchNorm refreshed on ``options.bn``.
        """
        return PointPosterior(self.mean, self.layout)

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
        generator: torch.Generator | None = None,
        diagonal: bool | None = None,
        blockwise: bool = False,
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
            generator: a ``torch.Generator`` on any device (z₂ is drawn before z₁), or None
                for the global RNG; one on another device seeds one on this posterior's
                device (``docs/concepts.md``).
            diagonal: drop the low-rank term (SWAG-Diag), as ``self.diagonal().sample(...)``.
            blockwise: one z₂ per parameter tensor.

        Returns:
            ``(*sample_shape, P)`` flat parameter vectors.

        Raises:
            ValueError: for a NaN, infinite or negative ``scale``, or a negative size in
                ``sample_shape``.
            TypeError: for a ``scale`` or ``sample_shape`` that is not a number / an integer.
        """
        check_bool(blockwise, "blockwise")
        if diagonal is not None:
            check_bool(diagonal, "diagonal")
        target = self.diagonal() if diagonal else self
        shape, value, gen = target._sample_args(sample_shape, scale, generator)
        return target._checked(target._draw(shape, value, gen, blockwise=blockwise), shape)

    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        return self._draw(shape, scale, generator, blockwise=False)

    def _draw(
        self,
        shape: tuple[int, ...],
        scale: float | None,
        generator: torch.Generator | None,
        *,
        blockwise: bool,
    ) -> Tensor:
        spans = list(zip(self.layout.offsets, self.layout.numels, strict=True))
        return draw(
            self.mean,
            self.std,
            self.deviations,
            shape,
            self.layout.size,
            spans,
            scale=scale,
            diagonal=self.diagonal_only,
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
        check_bool(diagonal, "diagonal")
        diagonal = diagonal or self.diagonal_only
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
            self.diagonal_only,
        )

    def save(self, path: _io.PathLike) -> None:
        """Write the posterior to ``path`` (safetensors, atomic)."""
        _io.save_file(path, _KIND, *self.to_state())

    @classmethod
    def load(cls, path: _io.PathLike, *, device: torch.device | str | None = None) -> SWAGPosterior:
        """Read a posterior written by :meth:`save`.

        Raises:
            ValueError: if the file is damaged, foreign, or inconsistent with its layout.
        """
        return cls.from_state(*_io.load_file(path, _KIND, device), str(path))

    def to_state(self) -> State:
        """The tensors and string metadata :meth:`save` writes (``MultiSWAG`` reuses them)."""
        meta = {"layout": self.layout.to_json(), "n": str(self.n)}
        if self.diagonal_only:
            meta["diagonal_only"] = "1"
        return {"mean": self.mean, "std": self.std, "deviations": self.deviations}, meta

    @classmethod
    def from_state(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str
    ) -> SWAGPosterior:
        """Rebuild from :meth:`to_state`'s output; ``where`` names the source in errors."""
        diagonal_only = (
            _io.int_field(meta, "diagonal_only", where, high=1) if "diagonal_only" in meta else 0
        )
        layout = ParamLayout.from_metadata(meta, "layout", where)
        n = _io.int_field(meta, "n", where, low=1)
        _io.expect_tensors(tensors, _io.POSTERIOR_STATISTICS, where)
        size, floats = layout.size, _io.FLOAT_DTYPES.values()
        mean = _io.tensor_field(tensors, "mean", where, (size,), floats)
        std = _io.tensor_field(tensors, "std", where, (size,), (mean.dtype,))
        deviations = tensors.get("deviations")
        k = deviations.shape[0] if deviations is not None and deviations.dim() == 2 else 0
        deviations = _io.tensor_field(tensors, "deviations", where, (k, size), floats)
        return cls(mean, std, deviations, layout, n, diagonal_only=bool(diagonal_only))
