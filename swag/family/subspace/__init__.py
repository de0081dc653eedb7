"""Subspace inference (Izmailov et al., 2019): Bayesian inference over z in θ = θ̂ + zB.

Build a :class:`Subspace` from a :class:`~swag.Collector` or :class:`~swag.SWAGPosterior`
(:meth:`Subspace.pca`, :meth:`Subspace.random`), define the data term with
:class:`SubspaceLikelihood`, infer z with :func:`elliptical_slice` or :func:`fit_vi`, and wrap the
result in a :class:`SubspacePosterior` for :func:`swag.predict`.
"""

from swag.family.subspace._basis import Subspace
from swag.family.subspace._ess import ESSResult, elliptical_slice
from swag.family.subspace._likelihood import SubspaceLikelihood
from swag.family.subspace._posterior import SubspacePosterior
from swag.family.subspace._vi import VIResult, fit_vi, gaussian_kl

__all__ = [
    "ESSResult",
    "Subspace",
    "SubspaceLikelihood",
    "SubspacePosterior",
    "VIResult",
    "elliptical_slice",
    "fit_vi",
    "gaussian_kl",
]
