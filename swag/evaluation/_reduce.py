"""Reducing predict's per-sample outputs: probability averages and Gaussian mixtures."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from swag.evaluation.metrics._validation import looks_like_probabilities


def reduce_probs(passes: Iterator[list[Any]], reduce: bool) -> Tensor:
    """Mean softmax over passes ``(N, ..., C)`` (float64 sums), or every pass ``(S, N, ..., C)``."""
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
            stacklevel=7,
        )
    return _float(logits).softmax(-1)


def reduce_gaussian(
    passes: Iterator[list[Any]], reduce: bool, noise_var: float | Tensor | None
) -> tuple[Tensor, Tensor]:
    """The mixture's mean and total variance over passes, or every pass's ``(mean, var)``."""
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


def finite(result: Tensor) -> Tensor:
    """``result``, checked for NaN (once, on the reduced output: off the hot path)."""
    if bool(torch.isnan(result).any()):
        raise ValueError(
            "the predictions contain NaN: the model returned NaN (or +inf) outputs, from NaN "
            "or inf in the loader's inputs or from sampled weights that overflow (check the "
            "loader and the posterior's scale)"
        )
    return result
