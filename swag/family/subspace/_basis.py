"""Subspaces of weight space around the SWA solution: θ = θ̂ + Bᵀz, built from SWAG statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from swag.core._checks import check_generator, check_positive
from swag.core._random import generator_for
from swag.core.collector import Collector
from swag.core.layout import ParamLayout
from swag.core.posterior import SWAGPosterior

Source = Collector | SWAGPosterior


def _statistics(source: Source) -> SWAGPosterior:
    if isinstance(source, Collector):
        return source.posterior()
    if isinstance(source, SWAGPosterior):
        return source
    raise TypeError(
        f"source must be a swag.Collector or swag.SWAGPosterior, got {type(source).__name__}"
    )


def _check_rank(rank: int, limit: int, what: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int in [1, {limit}] ({what}), got {rank!r}")
    if not 1 <= rank <= limit:
        raise ValueError(f"rank must be an int in [1, {limit}] ({what}), got {rank!r}")


@dataclass(frozen=True, eq=False)
class Subspace:
    """An affine subspace of the covered parameters: θ(z) = shift + Σ_j z_j · basis[j].

    Attributes:
        shift: θ̂ ``(P,)``, the origin (the SWA mean for the constructors below).
        basis: B ``(k, P)``, one direction per row, *not* normalised: its scale is what makes a
            unit prior z ~ N(0, I_k) sensible (see :meth:`pca`).
        layout: which model parameters the P entries are.
        kind: how the basis was made (``"pca"``, ``"random"`` or ``"custom"``).

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> collector = Collector(model, max_rank=4)
        >>> for _ in range(6):
        ...     _ = model.weight.data.add_(0.01 * torch.randn(2, 3))
        ...     collector.collect()
        >>> sub = Subspace.pca(collector, rank=2)
        >>> sub.theta(torch.zeros(2)).shape
        torch.Size([8])
    """

    shift: Tensor
    basis: Tensor
    layout: ParamLayout
    kind: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.layout, ParamLayout):
            raise TypeError(f"layout must be a swag.ParamLayout, got {type(self.layout).__name__}")
        for name in ("shift", "basis"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(
                    f"{name} must be a float tensor, got "
                    + (str(value.dtype) if isinstance(value, Tensor) else type(value).__name__)
                )
        if self.basis.dtype != self.shift.dtype:
            raise ValueError(
                f"basis must have the dtype of shift ({self.shift.dtype}), got {self.basis.dtype}"
            )
        if self.kind not in ("pca", "random", "custom"):
            raise ValueError(f"kind must be 'pca', 'random' or 'custom', got {self.kind!r}")
        size = self.layout.size
        if self.shift.shape != (size,):
            raise ValueError(f"shift must have shape ({size},), got {tuple(self.shift.shape)}")
        if self.basis.dim() != 2 or self.basis.shape[1] != size or self.basis.shape[0] < 1:
            shape = tuple(self.basis.shape)
            raise ValueError(f"basis must have shape (k >= 1, {size}), got {shape}")
        if not (bool(self.shift.isfinite().all()) and bool(self.basis.isfinite().all())):
            raise ValueError("shift and basis must be finite")

    @property
    def dim(self) -> int:
        """k, the number of directions."""
        return self.basis.shape[0]

    def theta(self, z: Tensor) -> Tensor:
        """θ̂ + zB: ``z`` ``(..., k)`` to flat weights ``(..., P)`` (differentiable in ``z``)."""
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a tensor (..., {self.dim}), got {type(z).__name__}")
        if z.shape[-1:] != (self.dim,):
            raise ValueError(f"z must have last dimension {self.dim}, got {tuple(z.shape)}")
        theta: Tensor = self.shift + z.to(self.basis.dtype) @ self.basis
        return theta

    def project(self, theta: Tensor) -> Tensor:
        """Least-squares coordinates ``(..., k)`` of ``theta`` ``(..., P)`` in the subspace."""
        if not isinstance(theta, Tensor) or theta.shape[-1:] != (self.layout.size,):
            got = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
            raise ValueError(f"theta must have shape (..., {self.layout.size}), got {got}")
        b = self.basis.to(torch.float64)
        gram = b @ b.T
        rhs = (theta.to(torch.float64) - self.shift.to(torch.float64)) @ b.T
        coords: Tensor = torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)
        return coords.to(self.shift.dtype)

    @classmethod
    def pca(cls, source: Source, rank: int = 5) -> Subspace:
        """The top-``rank`` principal directions of the SWAG deviations, around the SWA mean.

        With D = D̂ / √(K − 1) ``(K, P)`` and its thin SVD D = U S Vᵀ (computed on the K × P
        matrix in float64: O(K²P) time, O(KP) memory, never a P × P object), the basis rows
        are s_j v_jᵀ, j ≤ ``rank``: the directions scaled by their singular values, as in
        Izmailov et al. (2019). Then z ~ N(0, I) gives θ ~ N(θ̄, Σ_j s_j² v_j v_jᵀ), the low-rank
        SWAG covariance (scale 1) restricted to these directions, so a prior N(0, σ_p² I) with
        σ_p ≈ 1 is on the scale of the SGD trajectory. Each direction's sign is fixed so that
        its largest-magnitude entry is positive (SVD signs are otherwise arbitrary).

        Args:
            source: a :class:`~swag.Collector` (its current posterior) or a
                :class:`~swag.SWAGPosterior`, with K ≥ 2 deviations.
            rank: k, between 1 and K.

        Raises:
            ValueError: for K < 2, a rank outside [1, K], or deviations that span fewer than
                ``rank`` directions.
        """
        post = _statistics(source)
        k_dev = post.rank
        if k_dev < 2:
            raise ValueError(
                f"a PCA subspace needs at least 2 deviations, the source holds {k_dev}; "
                "collect more iterates (Collector(max_rank >= 2))"
            )
        _check_rank(rank, k_dev, f"the source holds K = {k_dev} deviations")
        d = post.deviations.to(torch.float64) / math.sqrt(k_dev - 1)
        _, s, vh = torch.linalg.svd(d, full_matrices=False)
        s, vh = s[:rank], vh[:rank]
        if bool((s <= s[0] * 1e-12).any()):
            raise ValueError(
                f"the deviations span fewer than rank={rank} directions (singular values "
                f"{s.tolist()}); use a smaller rank"
            )
        top = vh.abs().argmax(dim=1)
        signs = torch.sign(vh.gather(1, top[:, None]))
        basis = (s[:, None] * vh * signs).to(post.mean.dtype)
        return cls(post.mean.clone(), basis, post.layout, "pca")

    @classmethod
    def random(
        cls,
        source: Source,
        rank: int = 5,
        *,
        norm: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Subspace:
        """``rank`` random Gaussian directions around the SWA mean, each of length ``norm``.

        The default ``norm`` is √(mean_j s_j²) over the top-``rank`` singular values of
        D̂/√(K − 1) (as in :meth:`pca`), so that the random basis has the same total variance
        under a unit prior as the PCA basis of that rank: tr(BᵀB) = Σ_j s_j². Without
        deviations (K < 2) pass ``norm`` explicitly.

        Args:
            source: a :class:`~swag.Collector` or :class:`~swag.SWAGPosterior`.
            rank: k ≥ 1.
            norm: the Euclidean length of each direction.
            generator: a ``torch.Generator`` on any device, for reproducible bases.
        """
        post = _statistics(source)
        _check_rank(rank, post.layout.size, f"at most P = {post.layout.size}")
        check_generator(generator)
        if norm is not None:
            check_positive(norm, "norm")
        if norm is None:
            if post.rank < 2:
                raise ValueError(
                    "norm=None takes the scale from the PCA singular values, which need at "
                    f"least 2 deviations (the source holds {post.rank}); pass norm= explicitly"
                )
            d = post.deviations.to(torch.float64) / math.sqrt(post.rank - 1)
            s = torch.linalg.svdvals(d)[:rank]
            norm = float(s.square().sum().div(rank).sqrt())
        if not math.isfinite(norm) or norm <= 0:
            raise ValueError(f"norm must be finite and > 0, got {norm}")
        mean = post.mean
        generator = generator_for(mean.device, generator)
        basis = torch.randn(
            rank, post.layout.size, generator=generator, device=mean.device, dtype=torch.float64
        )
        basis *= norm / basis.norm(dim=1, keepdim=True)
        return cls(mean.clone(), basis.to(mean.dtype), post.layout, "random")
