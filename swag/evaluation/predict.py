"""Bayesian model averaging: a posterior's predictions, one sampled network at a time.

:func:`predict` takes the posterior, the model and the loader, plus two small option objects:
the likelihood ``head`` (:class:`Classification` or :class:`GaussianRegression`) and the
evaluation ``options`` (:class:`PredictOptions`, with :class:`BNRefresh` for BatchNorm).
:func:`swag.fit_scale`, the landscape scans and the benchmark take the same objects and run the
same loop (:mod:`swag._evaluation`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, overload

import torch
from torch import Tensor, nn

from swag.core._checks import (
    check_count,
)
from swag.core.posterior import Posterior
from swag.evaluation._loop import check_call, default_num_samples, run, warn_uneven
from swag.evaluation._options import (
    BNRefresh,
    Classification,
    GaussianRegression,
    Head,
    OutputFn,
    PredictOptions,
    legacy_keywords,
)

__all__ = [
    "BNRefresh",
    "Classification",
    "GaussianRegression",
    "Head",
    "OutputFn",
    "PredictOptions",
    "predict",
]

_PREDICT_LEGACY = (
    "bn_loader", "bn_batches", "input_fn", "device", "reduce", "progress", "mc_dropout",
    "output_fn", "output", "noise_var", "diagonal",
)  # fmt: skip


@overload
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = ...,
    scale: float | None = ...,
    generator: torch.Generator | None = ...,
    head: Classification | None = ...,
    options: PredictOptions | None = ...,
) -> Tensor: ...


@overload
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = ...,
    scale: float | None = ...,
    generator: torch.Generator | None = ...,
    head: GaussianRegression,
    options: PredictOptions | None = ...,
) -> tuple[Tensor, Tensor]: ...


@legacy_keywords(*_PREDICT_LEGACY)
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = None,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    head: Head | None = None,
    options: PredictOptions | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Bayesian model average of ``model`` over ``num_samples`` draws from ``posterior``.

    ``model`` is deep-copied once (it is never modified; computed tensors that modules keep
    as attributes, as ``torch.nn.utils.prune`` does, are copied detached). For each draw θ_s,
    taken one at a time in the posterior's order (a MultiSWAG's stratified allocation), the
    copy gets θ_s, its running statistics are recomputed on ``options.bn`` when it has
    BatchNorm or InstanceNorm tracking them, and it is evaluated in eval mode over ``loader``.
    Memory beyond the posterior: one model and O(N·C) outputs (S·N·C with ``reduce=False``).

    Classification (``head=Classification()``, the default): the model returns logits
    ``(B, ..., C)`` (class last); the result is p = (1/S) Σ_s softmax(f(x; θ_s)), ``(N, ..., C)``,
    summed in float64 and returned in float32 (float64 for float64 logits);
    ``options.reduce=False`` gives ``(S, N, ..., C)``.

    Regression (``head=GaussianRegression(noise_var=None)``): the model returns
    ``(mean, variance)`` (see :class:`GaussianRegression`). Returns the mixture's mean
    μ = mean_s μ_s and total variance σ² = mean_s σ²_s + var_s μ_s (aleatoric + epistemic;
    float64 Welford over samples), each ``(N,)`` or ``(N, D)``; ``reduce=False`` gives the
    per-sample ``(S, N, ...)`` pair.

    SWA (the mean alone): ``predict(posterior.swa(), model, loader, options=...)`` evaluates the
    one network at θ̄ with its BatchNorm refreshed, as ``to_model`` + ``update_bn`` + a loop.

    Randomness: with ``generator=None`` everything random (posterior draws, dropout, a shuffled
    BN loader) comes from the global RNG or the loader's own generator, as usual. With a
    generator, the same generator state gives the same result, bit for bit, and the global RNG
    is left as it was: one seed is drawn from ``generator`` first and seeds a forked global RNG
    (``torch.random.fork_rng``) for the run, which drives ``nn.Dropout`` and the shuffling of a
    ``DataLoader`` without a generator of its own; a ``DataLoader`` (``loader`` or
    ``options.bn.loader``) that has its own ``generator`` (or whose sampler has one) is
    reseeded from that forked RNG for the run and its generator's state restored afterwards;
    the posterior draws (and a mixture's random choice of members for the ``num_samples % M``
    remainder) come from ``generator``. A custom iterable with a private RNG is not reached.

    Args:
        posterior: a SWAGPosterior, PointPosterior, MultiSWAG (deep ensemble) or any
            :class:`~swag.Posterior`.
        model: the architecture, with the posterior's covered parameters (its other
            parameters and buffers are used as they are).
        loader: evaluation batches (tensors, tuples whose first item is the input, or dicts
            passed as keyword arguments, ``model(**batch)``), in a fixed order: every sample
            re-reads it.
        num_samples: S, the number of sampled networks (stochastic passes with ``mc_dropout``).
            Default: 30 (rounded up to a multiple of a MultiSWAG's members), but one pass per
            point for a point posterior or a mixture of points (a deep ensemble) without
            ``mc_dropout``, whose draws are identical anyway. A MultiSWAG's S that is not a
            multiple of its members warns (the remainder goes to members chosen at random).
        scale: covariance scale passed to ``posterior.sample``, finite and >= 0. Default None:
            the posterior's own default as in the SWAG paper, 0.5 for SWAG and 1.0 for its
            diagonal view ``posterior.diagonal()`` (SWAG-Diag).
        generator: makes the result reproducible (see Randomness).
        head: :class:`Classification` (default) or :class:`GaussianRegression`.
        options: :class:`PredictOptions`: BatchNorm refresh, MC dropout, ``input_fn``, device,
            ``reduce``, ``progress``. With ``mc_dropout`` every dropout stays live:
            ``nn.Dropout*``/``AlphaDropout`` layers, ``MultiheadAttention(dropout=...)``,
            Transformer layers (off their fused eval path) and multi-layer RNN dropout, plus
            modules of other libraries that gate an attention rate on their own flag (Hugging
            Face attention) when nothing in them keeps running statistics or another
            train-mode setting (LayerDrop, drop path); each such module alone is put in train
            mode, so BatchNorm and everything else stays in eval (rules and limits:
            ``swag/_dropout.py``, docs/gotchas.md).

    The keywords of the old signature (``bn_loader``, ``bn_batches``, ``input_fn``,
    ``output_fn``, ``device``, ``reduce``, ``progress``, ``mc_dropout``, ``output``,
    ``noise_var``, ``diagonal``) still work for one release, with a ``DeprecationWarning``.

    Raises:
        ValueError: for a BatchNorm model without ``options.bn``, a shuffled ``DataLoader``,
            ``mc_dropout`` without a dropout of rate > 0 or with one it cannot switch on (a
            module holding a float ``*dropout*`` rate next to running statistics or LayerDrop /
            drop path; the message names it and the setting), logits with one
            class, a NaN, infinite or negative ``scale``, an empty loader,
            outputs of another shape on a later pass (a one-shot generator), or NaN
            predictions (NaN inputs, or weights that overflow).
        TypeError: for an argument of the wrong type (the message names it), or a dict batch
            whose keys the model's ``forward`` does not take (the message says how to pick the
            input with ``input_fn``).

    Warns:
        UserWarning: when the model's outputs look like probabilities (softmax applied twice),
            or a MultiSWAG's ``num_samples`` is not a multiple of its members.

    Example:
        >>> from swag import PointPosterior
        >>> model = torch.nn.Linear(4, 3)
        >>> post = PointPosterior.from_model(model)
        >>> predict(post, model, [torch.randn(8, 4)]).shape  # one pass: a point posterior
        torch.Size([8, 3])
    """
    head, options, scale = check_call(posterior, model, loader, scale, generator, head, options)
    if num_samples is None:
        num_samples = default_num_samples(posterior, options.mc_dropout)
    check_count(num_samples, "num_samples")
    warn_uneven(posterior, num_samples, stacklevel=4)
    return run(posterior, model, loader, num_samples, scale, generator, head, options)
