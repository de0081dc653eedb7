"""The SWAG Gaussian posterior (diagonal plus low rank) and the posterior protocol."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.distributions import LowRankMultivariateNormal

from swag import _io
from swag._params import ParamLayout

SampleShape = int | Sequence[int] | torch.Size
KIND = "swag_posterior"


@runtime_checkable
class Posterior(Protocol):
    """What every posterior offers: a mean, flat samples, and a way into a model.

    ``sample`` returns flat parameter vectors of shape ``(*sample_shape, P)`` in
    ``layout`` order; ``apply_`` writes one into a model in place. Every posterior accepts
    ``scale`` and ``diagonal`` (a zero-variance one ignores them), so one prediction routine
    serves them all.
    """

    @property
    def layout(self) -> ParamLayout: ...

    @property
    def mean(self) -> Tensor: ...

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float = 0.5,
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
        return self.apply_(copy.deepcopy(model), theta)


def _shape(sample_shape: SampleShape) -> tuple[int, ...]:
    return (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)


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
        scale: float = 0.5,
        diagonal: bool = False,
        blockwise: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw θ ~ N(θ̄, scale · (diag σ² + D̂ᵀD̂ / (K − 1))).

        θ = θ̄ + √scale · (σ ⊙ z₁ + D̂ᵀ z₂ / √(K − 1)), z₁ ~ N(0, I_P), z₂ ~ N(0, I_K).

        At ``scale=0.5`` this is the SWAG paper's θ̄ + Σ_diag^½ z₁/√2 + D̂ z₂/√(2(K − 1)), and
        ``scale`` means what it means in swa_gaussian's ``SWAG.sample(scale, cov=True)``. With
        ``diagonal=True`` (SWAG-Diag; the paper uses scale 1 there) or fewer than two deviations
        the low-rank term is dropped. With ``blockwise=True`` each parameter tensor gets its own
        z₂, so the covariance's low-rank part is block-diagonal over parameter tensors.

        Args:
            sample_shape: leading shape of the result.
            generator: a ``torch.Generator`` on this posterior's device, for reproducible draws
                (z₂ is drawn before z₁).

        Returns:
            ``(*sample_shape, P)`` flat parameter vectors.
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
        self, *, scale: float = 0.5, diagonal: bool = False
    ) -> LowRankMultivariateNormal:
        """The same Gaussian as :meth:`sample` (not ``blockwise``), as a torch distribution.

        Raises:
            ValueError: if some σ is 0 (rebuild the posterior with ``min_variance > 0``).
        """
        if scale <= 0:
            raise ValueError(f"scale must be > 0 for a proper distribution, got {scale}")
        if not bool((self.std > 0).all()):
            raise ValueError(
                "some variances are 0, so the covariance is singular; "
                "build the posterior with Collector.posterior(min_variance=1e-30) or larger"
            )
        coef = lowrank_coef(self.rank, diagonal)
        if coef:
            factor = self.deviations.t().to(self.mean.dtype) * (math.sqrt(scale) * coef)
        else:
            factor = self.mean.new_zeros(self.layout.size, 1)
        return LowRankMultivariateNormal(self.mean, factor, scale * self.variance)

    def log_prob(self, theta: Tensor, *, scale: float = 0.5, diagonal: bool = False) -> Tensor:
        """Log density of ``theta`` ``(..., P)`` under the posterior, in nats; shape ``(...)``."""
        dist = self.to_distribution(scale=scale, diagonal=diagonal)
        log_p: Tensor = dist.log_prob(theta)  # type: ignore[no-untyped-call]
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
        _io.save_file(path, KIND, *self._to_tensors())

    @classmethod
    def load(cls, path: _io.PathLike, *, device: torch.device | str | None = None) -> SWAGPosterior:
        """Read a posterior written by :meth:`save`.

        Raises:
            ValueError: if the file is damaged, foreign, or inconsistent with its layout.
        """
        return cls._from_tensors(*_io.load_file(path, KIND, device), path)

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


def draw(
    mean: Tensor,
    std: Tensor,
    deviations: Tensor,
    sample_shape: SampleShape,
    size: int,
    spans: Sequence[tuple[int, int]],
    *,
    scale: float,
    diagonal: bool,
    blockwise: bool,
    generator: torch.Generator | None,
    take: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """Draws ``mean + √scale · (std ⊙ z₁ + D̂ᵀ z₂ / √(K − 1))``, shape ``(*sample_shape, L)``.

    The low-rank term is dropped when ``diagonal`` or K < 2. z₂ ``(num, blocks, K)`` is drawn
    before z₁ ``(num, size)``; ``take`` (default: all of it)
    picks the ``L`` entries that ``mean``, ``std`` and ``deviations`` ``(K, L)`` describe, so a
    shard of the statistics draws exactly its entries of the unsharded sample. ``spans`` lists
    each parameter's ``(offset, numel)`` in the ``L`` entries (the blocks of ``blockwise``).
    """
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    shape = _shape(sample_shape)
    num = math.prod(shape)
    dev, dt = mean.device, mean.dtype
    blocks = len(spans) if blockwise else 1
    k = deviations.shape[0]
    coef = lowrank_coef(k, diagonal)
    z2 = torch.randn(num, blocks, k, device=dev, dtype=dt, generator=generator) if coef else None
    out = torch.randn(num, size, device=dev, dtype=dt, generator=generator)
    if take is not None:
        out = take(out)
    torch.addcmul(mean, out, std, value=math.sqrt(scale), out=out)
    if z2 is not None:
        alpha = math.sqrt(scale) * coef
        d = deviations
        if blockwise:
            for b, (o, m) in enumerate(spans):
                out[:, o : o + m] += alpha * (z2[:, b].to(d.dtype) @ d[:, o : o + m]).to(out.dtype)
        elif d.dtype == out.dtype:
            out.addmm_(z2[:, 0], d, alpha=alpha)
        else:
            out.add_((z2[:, 0].to(d.dtype) @ d).to(out.dtype), alpha=alpha)
    return out.view(*shape, out.shape[-1])


def lowrank_coef(rank: int, diagonal: bool) -> float:
    """1/√(K−1), or 0 when the low-rank term is off (``diagonal``, or under 2 deviations)."""
    return 0.0 if diagonal or rank < 2 else 1.0 / math.sqrt(rank - 1)
