"""Elliptical slice sampling (Murray, Adams & MacKay, 2010) over subspace coordinates."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from swag.core._checks import (
    check_bool,
    check_callable,
    check_count,
    check_generator,
    check_positive,
)
from swag.core._random import generator_for

LogLik = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ESSResult:
    """A chain from :func:`elliptical_slice`.

    Attributes:
        samples: ``(num_samples, k)`` states after burn-in (and thinning), in chain order.
        log_likelihoods: ``(num_samples,)`` tempered log-likelihood log p(D | z)/T of each.
        evaluations: likelihood evaluations in all, burn-in included (each one is a full pass
            over the data for :class:`~swag.subspace.SubspaceLikelihood`).
    """

    samples: Tensor
    log_likelihoods: Tensor
    evaluations: int

    @property
    def evaluations_per_sample(self) -> float:
        """Mean likelihood evaluations per kept sample (burn-in and thinning included)."""
        return self.evaluations / self.samples.shape[0]


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), dtype=torch.float64, generator=generator))


def elliptical_slice(
    log_likelihood: LogLik,
    dim: int,
    num_samples: int,
    *,
    prior_std: float = 1.0,
    temperature: float = 1.0,
    burn_in: int = 0,
    thin: int = 1,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    max_shrinks: int = 200,
) -> ESSResult:
    """Sample p(z | D) ∝ p(D | z)^{1/T} N(z; 0, σ_p² I_k) by elliptical slice sampling.

    Each step draws ν ~ N(0, σ_p² I), a slice level log u + ℓ(z)/T, and an angle on the ellipse
    z cos φ + ν sin φ, shrinking the angle bracket towards φ = 0 until the point is above the
    level. Every step is accepted; there is no step size to tune. Cost per step: one likelihood
    evaluation for the slice level is reused from the previous state, so a step costs as many
    evaluations as proposals (1 when the first angle is accepted, more as the posterior
    narrows relative to the prior).

    Args:
        log_likelihood: z ``(k,)`` → log p(D | z), a scalar (untempered).
        dim: k.
        num_samples: states to keep.
        prior_std: σ_p.
        temperature: T > 0; T < 1 sharpens the likelihood (a cold posterior), T > 1 flattens it.
        burn_in: steps to run and discard first.
        thin: keep every ``thin``-th state.
        init: the starting state ``(k,)`` (default: 0, the subspace origin).
        generator: source of every random number (any device; drawn on the CPU).
        progress: show a progress bar over steps.
        max_shrinks: give up (RuntimeError) after this many shrinks in one step, which only a
            likelihood that is NaN or −∞ almost everywhere causes.

    Raises:
        TypeError: for arguments of the wrong type (a float count, a string scale).
        ValueError: for counts or scales out of range, a non-finite log-likelihood at
            ``init`` (the message says ``+inf``, ``-inf`` or ``nan``), or +inf at any state.
        RuntimeError: after ``max_shrinks`` shrinks in one step.

    Returns:
        The chain, on the device and dtype of ``init`` (float64 CPU by default).
    """
    check_callable(log_likelihood, "log_likelihood")
    prior_std = check_positive(prior_std, "prior_std")
    temperature = check_positive(temperature, "temperature")
    for name, count in (("num_samples", num_samples), ("thin", thin), ("dim", dim)):
        check_count(count, name)
    check_count(burn_in, "burn_in", minimum=0)
    check_count(max_shrinks, "max_shrinks")
    check_generator(generator)
    check_bool(progress, "progress")
    if init is not None and not isinstance(init, Tensor):
        raise TypeError(f"init must be a tensor ({dim},) or None, got {type(init).__name__}")
    z = torch.zeros(dim, dtype=torch.float64) if init is None else init.detach().clone()
    if z.shape != (dim,) or not z.is_floating_point() or not bool(z.isfinite().all()):
        raise ValueError(f"init must be a finite float tensor ({dim},), got {z}")
    evaluations = 1
    with torch.no_grad():
        ll = float(log_likelihood(z)) / temperature
    if not math.isfinite(ll):
        said = "+inf" if ll > 0 else str(ll)
        raise ValueError(
            f"log_likelihood at the initial state (init) is {said}; it must be finite: "
            + ("+inf is no likelihood of data" if ll > 0 else "start elsewhere with init=")
        )
    steps = burn_in + num_samples * thin
    generator = generator_for("cpu", generator)  # the chain's noise is drawn on the CPU
    kept, kept_ll = [], []
    for step in tqdm(range(steps), desc="ESS", disable=not progress):
        nu = torch.randn(dim, dtype=torch.float64, generator=generator).to(z) * prior_std
        level = ll + math.log(_uniform(generator))
        phi = 2 * math.pi * _uniform(generator)
        low, high = phi - 2 * math.pi, phi
        for _ in range(max_shrinks):
            proposal = z * math.cos(phi) + nu * math.sin(phi)
            evaluations += 1
            with torch.no_grad():
                new_ll = float(log_likelihood(proposal)) / temperature
            if new_ll == math.inf:
                raise ValueError(
                    f"log_likelihood returned +inf at z = {proposal.tolist()}; a log-likelihood "
                    "of data is finite (or -inf): check it for overflow"
                )
            if new_ll > level:
                z, ll = proposal, new_ll
                break
            if phi < 0:
                low = phi
            else:
                high = phi
            phi = low + (high - low) * _uniform(generator)
        else:
            raise RuntimeError(
                f"elliptical slice sampling shrank {max_shrinks} times without finding a point "
                "above the slice: the log-likelihood is NaN or -inf almost everywhere"
            )
        if step >= burn_in and (step - burn_in) % thin == thin - 1:
            kept.append(z)
            kept_ll.append(ll)
    return ESSResult(torch.stack(kept), torch.tensor(kept_ll, dtype=torch.float64), evaluations)
