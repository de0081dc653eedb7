"""Bayesian model averaging: a posterior's predictions, one sampled network at a time."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from swag.core._checks import (
    check_bool,
    check_callable,
    check_count,
    check_device,
    check_generator,
    check_loader,
    check_scale,
)
from swag.core._gaussian import check_head
from swag.core._params import working_copy
from swag.core.multiswag import MultiSWAG, iter_samples
from swag.core.point import PointPosterior
from swag.core.posterior import Posterior
from swag.evaluation._batches import call_model, move_to
from swag.evaluation._dropout import mc_dropout_modules
from swag.evaluation._reduce import finite, reduce_gaussian, reduce_probs
from swag.evaluation.bn import InputFn, default_input_fn, has_batchnorm, update_bn

__all__ = ["BNLoader", "OutputFn", "predict"]

OutputFn = Callable[[Any], Any]
BNLoader = Iterable[Any] | Literal[False] | None
_SHUFFLING = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


@overload
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = ...,
    scale: float | None = ...,
    diagonal: bool = ...,
    bn_loader: BNLoader = ...,
    bn_batches: int | None = ...,
    input_fn: InputFn | None = ...,
    output_fn: OutputFn | None = ...,
    device: torch.device | str | None = ...,
    generator: torch.Generator | None = ...,
    reduce: bool = ...,
    progress: bool = ...,
    mc_dropout: bool = ...,
    output: Literal["probs"] = ...,
) -> Tensor: ...


@overload
def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = ...,
    scale: float | None = ...,
    diagonal: bool = ...,
    bn_loader: BNLoader = ...,
    bn_batches: int | None = ...,
    input_fn: InputFn | None = ...,
    output_fn: OutputFn | None = ...,
    device: torch.device | str | None = ...,
    generator: torch.Generator | None = ...,
    reduce: bool = ...,
    progress: bool = ...,
    mc_dropout: bool = ...,
    output: Literal["gaussian"],
    noise_var: float | Tensor | None = ...,
) -> tuple[Tensor, Tensor]: ...


def predict(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_samples: int | None = None,
    scale: float | None = None,
    diagonal: bool = False,
    bn_loader: BNLoader = None,
    bn_batches: int | None = None,
    input_fn: InputFn | None = None,
    output_fn: OutputFn | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    reduce: bool = True,
    progress: bool = False,
    mc_dropout: bool = False,
    output: Literal["probs", "gaussian"] = "probs",
    noise_var: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Bayesian model average of ``model`` over ``num_samples`` draws from ``posterior``.

    ``model`` is deep-copied once (it is never modified; computed tensors that modules keep
    as attributes, as ``torch.nn.utils.prune`` does, are copied detached). For each draw θ_s,
    taken one at a time in the posterior's order (a MultiSWAG's stratified allocation), the
    copy gets θ_s, its running statistics are recomputed on ``bn_loader`` when it has
    BatchNorm or InstanceNorm tracking them, and it is evaluated in eval mode over ``loader``.
    Memory beyond the posterior: one model and O(N·C) outputs (S·N·C with ``reduce=False``).

    Classification (``output="probs"``): the model returns logits ``(B, ..., C)`` (class last);
    the result is p = (1/S) Σ_s softmax(f(x; θ_s)), ``(N, ..., C)``, summed in float64 and
    returned in float32 (float64 for float64 logits); ``reduce=False`` gives ``(S, N, ..., C)``.

    Regression (``output="gaussian"``): the model returns ``(mean, variance)``, a tensor with
    last dimension 2 (``[..., 0]`` mean, ``[..., 1]`` variance, not log-variance: adapt with
    ``output_fn``), or only the mean when ``noise_var`` is given (σ², a float or a tensor that
    broadcasts to one batch's mean, e.g. ``(D,)``). Returns the mixture's mean μ = mean_s μ_s and
    total variance σ² = mean_s σ²_s + var_s μ_s (aleatoric + epistemic; float64 Welford over
    samples), each
    ``(N,)`` or ``(N, D)``; ``reduce=False`` gives the per-sample ``(S, N, ...)`` pair.

    Randomness: with ``generator=None`` everything random (posterior draws, dropout, a shuffled
    ``bn_loader``) comes from the global RNG, as usual. With a generator the same seed gives the
    same result and the global RNG is left as it was: one seed is drawn from ``generator``
    first and seeds a forked global RNG (``torch.random.fork_rng``) for the run, which drives
    ``nn.Dropout`` and ``bn_loader`` shuffling; the posterior draws (and a mixture's random
    choice of members for the ``num_samples % M`` remainder) come from ``generator``.

    Args:
        posterior: a SWAGPosterior, PointPosterior, MultiSWAG (deep ensemble) or any
            :class:`~swag.Posterior`.
        model: the architecture, with the posterior's covered parameters (its other
            parameters and buffers are used as they are).
        loader: evaluation batches (tensors, tuples whose first item is the input, or dicts
            passed as keyword arguments), in a fixed order: every sample re-reads it.
        num_samples: S, the number of sampled networks (stochastic passes with ``mc_dropout``).
            Default: 30, but one pass per point for a point posterior or a mixture of points
            (a deep ensemble) without ``mc_dropout``, whose draws are identical anyway.
        scale: covariance scale passed to ``posterior.sample``, finite and >= 0. Default None:
            the posterior's own default as in the SWAG paper, 0.5 for SWAG and 1.0 for its
            diagonal view ``posterior.diagonal()`` (SWAG-Diag).
        diagonal: deprecated; pass ``posterior.diagonal()`` instead.
        bn_loader: training batches for the BatchNorm refresh, required when the model has
            BatchNorm or InstanceNorm with running statistics (:func:`swag.bn.has_batchnorm`);
            ``False`` keeps the model's current statistics (right only for the
            weights they were computed with). Ignored for models without BatchNorm.
        bn_batches: refresh on only the first ``bn_batches`` batches of ``bn_loader``.
        input_fn: maps a batch to the model input (default :func:`swag.bn.default_input_fn`).
        output_fn: maps the model's output to logits (or the regression output), e.g.
            ``lambda out: out.logits`` for Hugging Face models.
        device: move the working copy and the inputs here; results live on the output's device.
        generator: makes the result reproducible (see Randomness).
        reduce: average over samples (default) or return every sample.
        progress: show a progress bar over samples.
        mc_dropout: keep every dropout live during evaluation, so each pass is a stochastic
            MC-dropout pass: ``nn.Dropout*``/``AlphaDropout`` layers,
            ``MultiheadAttention(dropout=...)``, Transformer layers (off their fused eval path)
            and multi-layer RNN dropout, plus modules of other libraries that gate an
            attention rate on their own flag (Hugging Face attention) when nothing in them keeps
            running statistics or another train-mode setting (LayerDrop, drop path); each such
            module alone is put in train mode, so BatchNorm and everything else stays in eval
            (rules and limits: ``swag/_dropout.py``, docs/gotchas.md).
        output: ``"probs"`` or ``"gaussian"``.
        noise_var: fixed observation variance, for models that predict only a mean.

    Raises:
        ValueError: for a BatchNorm model without ``bn_loader``, a shuffled ``DataLoader``,
            ``mc_dropout`` without a dropout of rate > 0 or with one it cannot switch on (a
            module holding a float ``*dropout*`` rate next to running statistics or LayerDrop /
            drop path; the message names it and the setting), logits with one
            class, a NaN, infinite or negative ``scale`` or ``noise_var``, an empty loader,
            outputs of another shape on a later pass (a one-shot generator), or NaN
            predictions (NaN inputs, or weights that overflow).
        TypeError: for an argument of the wrong type (the message names it).

    Warns:
        UserWarning: when the model's outputs look like probabilities (softmax applied twice).

    Example:
        >>> from swag import PointPosterior
        >>> model = torch.nn.Linear(4, 3)
        >>> post = PointPosterior.from_model(model)
        >>> predict(post, model, [torch.randn(8, 4)]).shape  # one pass: a point posterior
        torch.Size([8, 3])
    """
    scale = _check_args(posterior, model, loader, locals())
    if diagonal:
        warnings.warn(
            "predict(diagonal=True) is deprecated; pass posterior.diagonal() instead",
            DeprecationWarning,
            stacklevel=2,
        )
        posterior = posterior.diagonal()
    if num_samples is None:
        num_samples = _default_num_samples(posterior, mc_dropout)
    check_count(num_samples, "num_samples")
    _check_fixed_order(loader)
    work = working_copy(model)
    if device is not None:
        work.to(device)
    refresh = _bn_source(work, bn_loader)
    live = mc_dropout_modules(work) if mc_dropout else []
    to_input = input_fn or default_input_fn

    def passes() -> Iterator[list[Any]]:
        """Per sample: the (``output_fn``-mapped) outputs of every batch of ``loader``."""
        thetas = iter_samples(posterior, num_samples, scale=scale, generator=generator)
        progress_bar = tqdm(thetas, total=num_samples, desc="predict", disable=not progress)
        for passes_done, theta in enumerate(progress_bar):
            posterior.apply_(work, theta)
            if refresh is not None:
                update_bn(refresh, work, num_batches=bn_batches, input_fn=input_fn, device=device)
            work.eval()
            for m in live:
                m.training = True
            outs = []
            for batch in loader:
                out = call_model(work, move_to(to_input(batch), device))
                out = out if output_fn is None else output_fn(out)
                if output == "gaussian" and noise_var is None:
                    check_head(out)
                outs.append(out)
            if not outs:
                raise ValueError(
                    "the evaluation loader yielded no batch"
                    + (
                        " on its second pass: it is exhausted after one. Pass something "
                        "re-iterable (a list or a DataLoader), not a generator or iterator"
                        if passes_done
                        else ""
                    )
                )
            yield outs

    with torch.no_grad(), _isolated_rng(generator):
        if output == "probs":
            return finite(reduce_probs(passes(), reduce))
        mean, var = reduce_gaussian(passes(), reduce, noise_var)
        return finite(mean), finite(var)


def _check_args(
    posterior: Posterior, model: nn.Module, loader: Iterable[Any], args: dict[str, Any]
) -> float | None:
    """Validates predict's arguments (each error names its argument); returns the scale."""
    if not isinstance(posterior, Posterior):
        raise TypeError(
            "posterior must be a Posterior (SWAGPosterior, PointPosterior, MultiSWAG, ...), got "
            f"{type(posterior).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_loader(loader, "loader")
    if args["bn_loader"] is not None and args["bn_loader"] is not False:
        check_loader(args["bn_loader"], "bn_loader")
    check_count(args["num_samples"], "num_samples", optional=True)
    check_count(args["bn_batches"], "bn_batches", optional=True)
    for flag in ("diagonal", "reduce", "progress", "mc_dropout"):
        check_bool(args[flag], flag)
    check_callable(args["input_fn"], "input_fn")
    check_callable(args["output_fn"], "output_fn")
    check_device(args["device"])
    check_generator(args["generator"])
    output, noise_var = args["output"], args["noise_var"]
    if output not in ("probs", "gaussian"):
        raise ValueError(f"output must be 'probs' or 'gaussian', got {output!r}")
    if noise_var is not None:
        if output != "gaussian":
            raise ValueError("noise_var is for output='gaussian' only")
        if isinstance(noise_var, bool) or not isinstance(noise_var, (float, int, Tensor)):
            raise TypeError(
                f"noise_var must be a float or a tensor, got {type(noise_var).__name__}"
            )
        var = torch.as_tensor(noise_var)
        if not bool(torch.isfinite(var).all()) or bool((var < 0).any()):
            raise ValueError(f"noise_var must be finite and >= 0, got {noise_var!r}")
    return None if args["scale"] is None else check_scale(args["scale"], False)


def _default_num_samples(posterior: Posterior, mc_dropout: bool = False) -> int:
    """``predict``'s default S: 30 draws, or one per point when every draw would be the same.

    A :class:`~swag.PointPosterior` gives 1 and a mixture of only points (a deep ensemble, also
    nested) the smallest S whose stratified allocation weighs every member exactly as the
    mixture does (one per member for a flat ensemble), unless ``mc_dropout`` makes each pass
    random.
    """
    exact = None if mc_dropout else _exact_point_samples(posterior)
    return 30 if exact is None else exact


def _exact_point_samples(posterior: Posterior) -> int | None:
    """S for a point or a mixture of only points; None for anything stochastic."""
    if isinstance(posterior, PointPosterior):
        return 1
    if isinstance(posterior, MultiSWAG):
        sizes = [_exact_point_samples(c) for c in posterior.components]
        if all(n is not None for n in sizes):
            return len(sizes) * math.lcm(*(n for n in sizes if n is not None))
    return None


def _check_fixed_order(loader: Iterable[Any]) -> None:
    if not isinstance(loader, DataLoader):
        return
    samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
    shuffling = [isinstance(s, _SHUFFLING) or getattr(s, "shuffle", False) for s in samplers]
    if any(shuffling):
        raise ValueError(
            "the evaluation loader shuffles (its sampler is random): every sampled network would "
            "see the examples in a different order, and the averaged predictions would not line "
            "up with the targets. Build it with shuffle=False (for a DistributedSampler: "
            "DistributedSampler(dataset, shuffle=False))"
        )


def _bn_source(model: nn.Module, bn_loader: BNLoader) -> Iterable[Any] | None:
    """The loader to refresh BatchNorm with, or None when there is nothing to refresh."""
    if bn_loader is False or not has_batchnorm(model):
        return None
    if bn_loader is None:
        raise ValueError(
            "the model has BatchNorm (or InstanceNorm) layers that track running statistics, "
            "which must be recomputed for "
            "every sampled network: pass bn_loader=train_loader (and bn_batches=... to use only "
            "the first batches), or bn_loader=False to keep the model's current statistics "
            "(right only for the weights they were computed with)"
        )
    return bn_loader


@contextlib.contextmanager
def _isolated_rng(generator: torch.Generator | None) -> Iterator[None]:
    """With a generator: a forked global RNG seeded from it, restored on exit."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**63 - 1, (), generator=generator, device=generator.device))
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield
