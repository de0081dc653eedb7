"""Post-hoc EMA (Karras et al. 2024, EDM2): choose the EMA length after training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from swag.core._averaging_rules import PowerEMA, sigma_rel_to_gamma
from swag.core._initdoc import document_init
from swag.core.layout import ParamSelector

__all__ = ["PostHocEMA"]


def _gram(g1: np.ndarray, t1: np.ndarray, g2: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """⟨p_i, p_j⟩ = ∫ p_i p_j dτ for profiles p(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t].

    Works in log space: (γ_i+1)(γ_j+1) m^(γ_i+γ_j+1) / ((γ_i+γ_j+1) t_i^(γ_i+1) t_j^(γ_j+1)),
    m = min(t_i, t_j).
    """
    gi, ti = g1[:, None], t1[:, None]
    gj, tj = g2[None, :], t2[None, :]
    m = np.minimum(ti, tj)
    log = (gi + gj + 1) * np.log(m) - (gi + 1) * np.log(ti) - (gj + 1) * np.log(tj)
    out: np.ndarray = (gi + 1) * (gj + 1) / (gi + gj + 1) * np.exp(log)
    return out


@document_init
class PostHocEMA:
    """Two power-EMA profiles, snapshotted every ``every`` collects, for any σ_rel afterwards.

    During training each :meth:`collect` updates the two running averages (mean-only
    collectors, 1·P each); every ``every`` collects both are copied into the snapshot store.
    Storage is bounded: when a profile would hold more than ``max_snapshots`` snapshots, every
    other one is dropped and ``every`` doubles (the store stays spread over the whole run). After
    training, :meth:`reconstruct` solves EDM2's least squares: the combination of the stored
    snapshots and the current averages whose weight profile over training time is closest
    (in L², continuous time) to the requested power profile at the current step.

    Memory: ``2·P`` for the averages plus at most ``2·max_snapshots·P`` of snapshots.

    Args:
        model: the network being trained.
        sigma_rels: the two profiles' σ_rel (EDM2 uses 0.05 and 0.10).
        every: collects between snapshots (≥ 1).
        max_snapshots: snapshots kept per profile (≥ 2).
        params: as for :class:`~swag.Collector`.
        device: as for :class:`~swag.Collector`.
        dtype: as for :class:`~swag.Collector`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma_rels: Sequence[float] = (0.05, 0.10),
        every: int = 100,
        max_snapshots: int = 64,
        params: ParamSelector = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        for name, value, low in (("every", every, 1), ("max_snapshots", max_snapshots, 2)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value!r}")
        if len(sigma_rels) != 2 or sigma_rels[0] == sigma_rels[1]:
            raise ValueError(f"sigma_rels must be two different values, got {sigma_rels!r}")
        from swag.core.collector import Collector  # here: swag.core.collector imports this package

        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        self.averages: list[Collector] = [
            Collector(
                model,
                0,
                params=params,
                device=device,
                dtype=dtype,
                average=PowerEMA(gamma=g),
                variance=False,
            )
            for g in self.gammas
        ]
        self.every = every
        self.max_snapshots = max_snapshots
        self.times: list[int] = []  # collect count of each stored snapshot (both profiles)
        self.snapshots: list[list[Tensor]] = [[], []]  # per profile, (P,) each

    @property
    def n(self) -> int:
        """Collects so far."""
        return self.averages[0].n

    def collect(self, model: nn.Module | None = None) -> None:
        """Update both averages with the current parameters; snapshot every ``every`` collects."""
        for average in self.averages:
            average.collect(model)
        if self.n % self.every == 0:
            self.times.append(self.n)
            for store, average in zip(self.snapshots, self.averages, strict=True):
                store.append(average.mean)
            if len(self.times) > self.max_snapshots:
                keep = [i for i, t in enumerate(self.times) if t % (2 * self.every) == 0]
                self.times = [self.times[i] for i in keep]
                self.snapshots = [[store[i] for i in keep] for store in self.snapshots]
                self.every *= 2

    def coefficients(
        self, *, sigma_rel: float | None = None, gamma: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, gammas, times)``: the least-squares weights of each basis average.

        The basis is every stored snapshot of both profiles, then the two current averages.
        """
        target = PowerEMA(gamma=gamma, sigma_rel=sigma_rel).exponent
        if self.n == 0:
            raise RuntimeError("nothing collected yet: call collect() at least once first")
        times = np.array([*self.times, self.n] * 2, dtype=np.float64)
        count = len(self.times) + 1
        gammas = np.repeat(np.array(self.gammas), count)
        a = _gram(gammas, times, gammas, times)
        b = _gram(gammas, times, np.array([target]), np.array([float(self.n)]))[:, 0]
        x = np.linalg.lstsq(a, b, rcond=1e-12)[0]
        return x, gammas, times

    def reconstruct(self, *, sigma_rel: float | None = None, gamma: float | None = None) -> Tensor:
        """θ̄ ``(P,)`` under the power profile ``sigma_rel`` (or ``gamma``) at the current step.

        The combination is summed in float64 (its coefficients alternate in sign), then cast
        to the statistics' dtype.
        """
        x, _, _ = self.coefficients(sigma_rel=sigma_rel, gamma=gamma)
        basis = [
            t
            for store, avg in zip(self.snapshots, self.averages, strict=True)
            for t in (*store, avg.mean)
        ]
        out = torch.zeros_like(basis[0], dtype=torch.float64)
        for coef, t in zip(x.tolist(), basis, strict=True):
            out.add_(t, alpha=coef)
        return out.to(basis[0].dtype)
