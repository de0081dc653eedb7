"""Bayesian model averaging: a posterior's predictions, one sampled network at a time."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from swag._checks import (
    check_bool,
    check_callable,
    check_count,
    check_device,
    check_generator,
    check_loader,
    check_scale,
)
from swag._dropout import mc_dropout_modules
from swag.bn import InputFn, call_model, default_input_fn, has_batchnorm, move_to, update_bn
from swag.metrics._validation import looks_like_probabilities
from swag.multiswag import MultiSWAG, iter_samples
from swag.point import PointPosterior
from swag.posterior import Posterior

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

    ``model`` is deep-copied once (it is never modified). For each draw θ_s, taken one at a
    time in the posterior's order (:func:`swag.multiswag.iter_samples`: a MultiSWAG's
    stratified allocation), the copy gets θ_s, its BatchNorm statistics are recomputed on
    ``bn_loader`` when it has BatchNorm, and it is evaluated in eval mode over ``loader``.
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
    ``nn.Dropout`` and ``bn_loader`` shuffling; the posterior draws come from ``generator``.

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
            the mode's default as in the SWAG paper, 0.5 for SWAG and 1.0 with
            ``diagonal=True`` (SWAG-Diag).
        diagonal: drop the low-rank term (SWAG-Diag).
        bn_loader: training batches for the BatchNorm refresh, required when the model has
            BatchNorm; ``False`` keeps the model's current statistics (right only for the
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
            and multi-layer RNN dropout; each such module alone is put in train mode, so
            BatchNorm and everything else stays in eval mode.
        output: ``"probs"`` or ``"gaussian"``.
        noise_var: fixed observation variance, for models that predict only a mean.

    Raises:
        ValueError: for a BatchNorm model without ``bn_loader``, a shuffled ``DataLoader``,
            ``mc_dropout`` without a dropout of rate > 0 or with one it cannot switch on (a
            module holding a float ``*dropout*`` rate; the message names it), logits with one
            class, a NaN, infinite or negative ``scale`` or ``noise_var``, an empty loader,
            outputs of another shape on a later pass (a one-shot generator), or NaN
            predictions (NaN inputs, or weights that overflow).
        TypeError: for an argument of the wrong type (the message names it).

    Warns:
        UserWarning: when the model's outputs look like probabilities (softmax applied twice).

    Example:
        >>> from swag.point import PointPosterior
        >>> model = torch.nn.Linear(4, 3)
        >>> post = PointPosterior.from_model(model)
        >>> predict(post, model, [torch.randn(8, 4)]).shape  # one pass: a point posterior
        torch.Size([8, 3])
    """
    scale = _check_args(posterior, model, loader, locals())
    if num_samples is None:
        num_samples = default_num_samples(posterior, mc_dropout)
    check_count(num_samples, "num_samples")
    _check_fixed_order(loader)
    work = copy.deepcopy(model)
    if device is not None:
        work.to(device)
    refresh = _bn_source(work, bn_loader)
    live = mc_dropout_modules(work) if mc_dropout else []
    to_input = input_fn or default_input_fn

    def passes() -> Iterator[list[Any]]:
        """Per sample: the (``output_fn``-mapped) outputs of every batch of ``loader``."""
        thetas = iter_samples(
            posterior, num_samples, scale=scale, diagonal=diagonal, generator=generator
        )
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
                outs.append(out if output_fn is None else output_fn(out))
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
            return _finite(_reduce_probs(passes(), reduce))
        mean, var = _reduce_gaussian(passes(), reduce, noise_var)
        return _finite(mean), _finite(var)


def _check_args(
    posterior: Posterior, model: nn.Module, loader: Iterable[Any], args: dict[str, Any]
) -> float:
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
    return check_scale(args["scale"], args["diagonal"])


def _finite(result: Tensor) -> Tensor:
    """``result``, checked for NaN (once, on the reduced output: off the hot path)."""
    if bool(torch.isnan(result).any()):
        raise ValueError(
            "the predictions contain NaN: the model returned NaN (or +inf) outputs, from NaN "
            "or inf in the loader's inputs or from sampled weights that overflow (check the "
            "loader and the posterior's scale)"
        )
    return result


def default_num_samples(posterior: Posterior, mc_dropout: bool = False) -> int:
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


def _reduce_probs(passes: Iterator[list[Any]], reduce: bool) -> Tensor:
    samples = (
        torch.cat([_probs(_tensor(o, "logits"), check=s + b == 0) for b, o in enumerate(outputs)])
        for s, outputs in enumerate(passes)
    )
    first = next(samples)
    if not reduce:
        return torch.stack([first, *(_same_shape(first, p) for p in samples)])
    total, count = first.double(), 1
    for probs in samples:
        total += _same_shape(first, probs)
        count += 1
    return (total / count).to(first.dtype)


def _probs(logits: Tensor, check: bool) -> Tensor:
    """Softmax over the last dimension of logits of 2+ classes.

    With ``check`` (the first batch of the first pass), warn if they look like probabilities.
    """
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)}: the class dimension "
            "(last) needs 2+ entries, softmax over one is always 1. For a binary classifier "
            "with one logit pass output_fn=lambda z: torch.cat([torch.zeros_like(z), z], -1)"
        )
    if check and looks_like_probabilities(logits):
        warnings.warn(
            "the model's outputs are non-negative and sum to 1: they look like probabilities, "
            "and predict applies softmax to them again. Return logits (drop the final Softmax) "
            "or pass output_fn=torch.log",
            UserWarning,
            stacklevel=5,
        )
    return _float(logits).softmax(-1)


def _reduce_gaussian(
    passes: Iterator[list[Any]], reduce: bool, noise_var: float | Tensor | None
) -> tuple[Tensor, Tensor]:
    samples = (_gaussian(outputs, noise_var) for outputs in passes)
    mean, var = next(samples)
    if not reduce:
        rest = [(_same_shape(mean, m), v) for m, v in samples]
        return torch.stack([mean, *(m for m, _ in rest)]), torch.stack([var, *(v for _, v in rest)])
    mu, var_sum, count = mean.double(), var.double(), 1
    m2 = torch.zeros_like(mu)
    for m, v in samples:  # Welford over samples: the variance of the means without cancellation
        count += 1
        delta = _same_shape(mean, m).double() - mu
        mu += delta / count
        m2 += delta * (m.double() - mu)
        var_sum += v
    return mu.to(mean.dtype), ((var_sum + m2) / count).to(mean.dtype)


def _gaussian(outputs: list[Any], noise_var: float | Tensor | None) -> tuple[Tensor, Tensor]:
    """One pass's regression outputs as ``(mean, variance)`` over the whole loader."""
    means, variances = zip(*(_split(o, noise_var) for o in outputs), strict=True)
    mean, var = torch.cat(means), torch.cat(variances)
    if bool((var < 0).any()):
        raise ValueError("the model returned a negative variance; return σ², not log σ²")
    return mean, var


def _split(out: Any, noise_var: float | Tensor | None) -> tuple[Tensor, Tensor]:
    """One batch's regression output as ``(mean, variance)``, floating point."""
    if noise_var is not None:
        mean = _float(_tensor(out, "mean"))
        var = torch.as_tensor(noise_var, dtype=mean.dtype, device=mean.device)
        try:
            return mean, var.expand_as(mean)
        except RuntimeError:
            raise ValueError(
                f"noise_var of shape {tuple(var.shape)} does not broadcast to a batch's mean of "
                f"shape {tuple(mean.shape)}: it is applied batch by batch, so give a float or a "
                "per-output tensor (e.g. shape (D,)), not one value per example"
            ) from None
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return _float(_tensor(out[0], "mean")), _float(_tensor(out[1], "variance"))
    if isinstance(out, Tensor) and out.dim() >= 2 and out.shape[-1] == 2:
        return _float(out[..., 0]), _float(out[..., 1])
    raise ValueError(
        "for output='gaussian' the model must return (mean, variance), a tensor whose last "
        "dimension is 2 ([..., 0] mean, [..., 1] variance), or only the mean with noise_var=; "
        f"got {_describe(out)} (adapt it with output_fn=)"
    )


def _tensor(out: Any, what: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"expected the model to return {what} as a tensor, got {_describe(out)}; "
            "pass output_fn= to extract it (e.g. output_fn=lambda out: out.logits)"
        )
    return out


def _describe(out: Any) -> str:
    return f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__


def _float(t: Tensor) -> Tensor:
    """``t`` in at least float32 (half and bfloat16 are widened)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _same_shape(first: Tensor, current: Tensor) -> Tensor:
    """``current``, checked to have the shape the first pass gave."""
    if first.shape != current.shape:
        raise ValueError(
            f"the loader gave outputs of shape {tuple(current.shape)} on one pass and "
            f"{tuple(first.shape)} on another; it must yield the same data on every pass "
            "(a DataLoader or a list, not a one-shot generator)"
        )
    return current


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
            "the model has BatchNorm layers, whose running statistics must be recomputed for "
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
