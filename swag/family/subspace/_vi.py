"""Variational inference over subspace coordinates: a Gaussian q(z) fitted by the ELBO."""

from __future__ import annotations

import math
from collections.abc import Sized
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from swag.core._checks import check_bool, check_count, check_generator, check_positive
from swag.core._random import generator_for
from swag.family.subspace._likelihood import SubspaceLikelihood


@dataclass(frozen=True)
class VIResult:
    """The fitted q(z) = N(loc, L Lᵀ) and the optimisation trace.

    Attributes:
        loc: ``(k,)``.
        scale_tril: L ``(k, k)``, lower triangular with a positive diagonal (diagonal for
            ``full=False``).
        elbo: ``(steps,)`` the per-step stochastic ELBO estimates (tempered, nats).
    """

    loc: Tensor
    scale_tril: Tensor
    elbo: Tensor


def gaussian_kl(loc: Tensor, scale_tril: Tensor, prior_std: float) -> Tensor:
    """KL(N(loc, LLᵀ) ‖ N(0, σ_p² I)) in closed form, a scalar.

    ½ [tr(LLᵀ)/σ_p² + ‖loc‖²/σ_p² − k + k log σ_p² − log det LLᵀ].
    """
    k = loc.shape[-1]
    var = prior_std**2
    trace = scale_tril.square().sum() / var
    logdet = 2 * scale_tril.diagonal().log().sum()
    return 0.5 * (trace + loc.square().sum() / var - k + k * math.log(var) - logdet)


def fit_vi(
    likelihood: SubspaceLikelihood,
    *,
    prior_std: float = 1.0,
    temperature: float = 1.0,
    full: bool = False,
    epochs: int = 50,
    lr: float = 0.01,
    mc_samples: int = 1,
    init_std: float = 0.05,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> VIResult:
    """Fit q(z) = N(μ, LLᵀ) by maximising the tempered ELBO with reparameterised gradients.

    ELBO = E_q[log p(D | z)] / T − KL(q ‖ N(0, σ_p² I)). Each Adam step uses one batch of
    ``likelihood.loader``, scaled by N / B to estimate the full-data term without bias, and
    ``mc_samples`` draws z = μ + Lε, ε ~ N(0, I). The diagonal of L is softplus of a free
    parameter; with ``full=True`` its strict lower triangle is free too. The learning rate
    anneals from ``lr`` to 0 on a cosine over the run, so the last iterate settles at the
    optimum instead of jittering around it by a few ``lr``.

    Cost: ``epochs`` × (batches per epoch) steps, each ``mc_samples`` forward and backward
    passes over one batch; in all about ``epochs · mc_samples`` passes over the data, plus
    their backward passes.

    Args:
        likelihood: the data term (its model, subspace and loader).
        prior_std: σ_p.
        temperature: T > 0, as for :func:`elliptical_slice`.
        full: a full-covariance Gaussian instead of a diagonal one.
        epochs: passes over the loader.
        lr: Adam's initial learning rate.
        mc_samples: draws of z per step.
        init_std: the initial standard deviation of every coordinate (μ starts at 0).
        generator: source of ε (any device; drawn on the CPU), for a reproducible fit.
        progress: show a progress bar over epochs.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for counts or scales out of range, or an ELBO that is NaN or infinite at
            any step (NaN weights or data, or a diverging fit): no NaN posterior is returned.
    """
    if not isinstance(likelihood, SubspaceLikelihood):
        raise TypeError(
            "likelihood must be a swag.subspace.SubspaceLikelihood, got "
            + type(likelihood).__name__
        )
    for name, value in (
        ("prior_std", prior_std), ("temperature", temperature), ("lr", lr), ("init_std", init_std)
    ):  # fmt: skip
        check_positive(value, name)
    for name, count in (("epochs", epochs), ("mc_samples", mc_samples)):
        check_count(count, name)
    check_bool(full, "full")
    check_generator(generator)
    check_bool(progress, "progress")
    k = likelihood.subspace.dim
    dt = torch.float64
    loc = nn.Parameter(torch.zeros(k, dtype=dt))
    raw_diag = nn.Parameter(torch.full((k,), math.log(math.expm1(init_std)), dtype=dt))
    lower = nn.Parameter(torch.zeros(k, k, dtype=dt))
    params = [loc, raw_diag] + ([lower] if full else [])
    opt = torch.optim.Adam(params, lr=lr)
    loader = likelihood.loader
    per_epoch = len(loader) if isinstance(loader, Sized) else sum(1 for _ in loader)  # re-iterable
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    mask = torch.ones(k, k, dtype=dt).tril(-1)

    def scale_tril() -> Tensor:
        diag = torch.diag(nn.functional.softplus(raw_diag))
        return diag + lower * mask if full else diag

    trace: list[float] = []
    generator = generator_for("cpu", generator)  # ε is drawn on the CPU
    for _ in tqdm(range(epochs), desc="VI", disable=not progress):
        for inputs, target in likelihood.batches():
            tril = scale_tril()
            eps = torch.randn(mc_samples, k, dtype=dt, generator=generator)
            data = torch.zeros((), dtype=dt)
            for e in eps:
                z = loc + tril @ e
                data = data + likelihood.batch_log_lik(z, inputs, target).to(dt)
            data = data / mc_samples * (likelihood.size / len(target))
            elbo = data / temperature - gaussian_kl(loc, tril, prior_std)
            if not bool(elbo.isfinite()):
                raise ValueError(
                    f"the ELBO is {float(elbo.detach())} at step {len(trace) + 1}: the "
                    "log-likelihood of a batch is not finite (NaN or inf in the weights, inputs "
                    "or targets, or an lr= so large that q diverged); nothing was returned"
                )
            opt.zero_grad()
            (-elbo).backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            trace.append(float(elbo.detach()))
        likelihood.calls += mc_samples
    with torch.no_grad():
        return VIResult(loc.detach().clone(), scale_tril().detach().clone(), torch.tensor(trace))
