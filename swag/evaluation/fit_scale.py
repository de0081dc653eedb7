"""Posterior-scale fitting: the covariance scale that minimises the validation NLL of the BMA.

The scale is SWAG's one free knob (the SWAG paper fixes it at 0.5). :func:`fit_scale` is its
counterpart of temperature scaling: a bounded 1-D search over ``log(scale)`` of the validation
negative log-likelihood of the Bayesian model average. Every candidate uses the same noise
(common random numbers: the posterior's draws are ``θ̄ + √scale · ε`` with the same ``ε``), so
the objective is a smooth function of the scale and the search is deterministic.

Example:
    Labels drawn with a fresh weight draw per example at scale 0.5, so 0.5 is the true width:

    >>> from swag import ParamLayout, SWAGPosterior
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> g = torch.Generator().manual_seed(0)
    >>> layout = ParamLayout.from_model(model)
    >>> post = SWAGPosterior(2 * torch.randn(6, generator=g), torch.ones(6), torch.zeros(0, 6),
    ...                      layout, n=1)
    >>> x = 2 * torch.randn(4000, 2, generator=g)
    >>> w = post.sample((4000,), scale=0.5, generator=g).view(-1, 3, 2)
    >>> p = torch.einsum("ncd,nd->nc", w, x).softmax(-1)
    >>> y = torch.multinomial(p, 1, generator=g).squeeze(1)
    >>> s = fit_scale(post, model, [(x, y)], num_samples=100, generator=g)
    >>> 0.35 < s < 0.7
    True
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from swag.core._checks import check_count, check_loader
from swag.core._random import common_generator
from swag.core.posterior import Posterior
from swag.evaluation.metrics import nll
from swag.evaluation.predict import predict

__all__ = ["fit_scale"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the golden-section ratio
_FLAT = 1e-9  # relative spread of the NLLs tried below which the objective is flat (rounding)


def fit_scale(
    posterior: Posterior,
    model: nn.Module,
    val_loader: Iterable[Any],
    *,
    num_samples: int,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = None,
    diagonal: bool = False,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (1e-2, 4.0),
    tol: float = 0.05,
    input_fn: Callable[[Any], Any] | None = None,
    target_fn: Callable[[Any], Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> float:
    """The covariance scale minimising the validation NLL of ``posterior``'s model average.

    Golden-section search over ``log(scale)`` inside ``bounds`` until the bracket is narrower
    than ``tol`` (in log units: 0.05 ≈ 5% of the scale); about ``log(log(hi/lo)/tol)/log(1.618)
    + 2`` evaluations (12 with the defaults), each one :func:`swag.predict` over ``val_loader``
    with ``num_samples`` draws. Works for a :class:`~swag.SWAGPosterior` (``posterior.diagonal()``
    for SWAG-Diag) and a :class:`~swag.MultiSWAG` (one scale shared by every member).

    Common random numbers: every candidate starts from a copy of ``generator``'s state, so all
    candidates see the same noise and the same dropout/BN-shuffle seed; ``generator`` itself is
    left untouched (use another one, or advance it, before predicting on test data).

    Args:
        posterior: the posterior whose scale is fitted (any :class:`~swag.Posterior`).
        model: the architecture, as for :func:`swag.predict`.
        val_loader: held-out ``(inputs, targets)`` batches in a fixed order (never the test
            set); other batch formats need ``input_fn`` and ``target_fn``.
        num_samples: draws per candidate scale, >= 1.
        bn_loader: training batches for the BatchNorm refresh of each draw (as in ``predict``).
        bn_batches: refresh on only the first ``bn_batches`` batches of ``bn_loader``.
        diagonal: deprecated; pass ``posterior.diagonal()`` instead.
        generator: source of the common random numbers, on any device; None draws their seed
            from the global RNG (``docs/concepts.md``, "Devices and generators").
        bounds: search interval ``(lo, hi)``, ``0 < lo < hi < inf``.
        tol: width in ``log(scale)`` at which the search stops, > 0.
        input_fn: maps a batch to the model input (default: its first item).
        target_fn: maps a batch to its ``(B,)`` integer targets (default: its second item).
        device: where the working copy of the model runs.
        progress: show a progress bar over the evaluations.

    Returns:
        The fitted scale. When it lies within ``tol`` of a bound, a ``RuntimeWarning`` says so
        (the optimum may lie outside ``bounds``); when every scale tried gives the same NLL (a
        posterior without spread), a ``RuntimeWarning`` says the objective is flat instead.

    Raises:
        ValueError: for bad ``num_samples``, ``bounds`` (not a pair ``(lo, hi)``) or ``tol``,
            an empty ``val_loader``, or batches without targets.
        TypeError: for a ``num_samples`` that is not an integer (numpy integers are fine).
    """
    check_count(num_samples, "num_samples")  # numpy integers are fine, as in predict
    lo, hi = _check_bounds(bounds)
    if not tol > 0.0:
        raise ValueError(f"tol must be > 0, got {tol}")
    check_loader(val_loader, "val_loader")
    batches = list(val_loader)
    if not batches:
        raise ValueError(
            "val_loader yielded no batch: pass held-out (inputs, targets) batches, in a list "
            "or a re-iterable DataLoader"
        )
    targets = torch.cat([(target_fn or _second)(b) for b in batches]).cpu()
    if diagonal:
        warnings.warn(
            "fit_scale(diagonal=True) is deprecated; pass posterior.diagonal() instead",
            DeprecationWarning,
            stacklevel=2,
        )
        posterior = posterior.diagonal()
    if not posterior.scalable:
        raise ValueError(
            f"fit_scale: scale has no effect on a {type(posterior).__name__} (no covariance to "
            "scale); calibrate it with swag.fit_temperature instead"
        )
    common = common_generator(posterior.mean.device, generator)
    state = common.get_state()

    def objective(log_scale: float) -> float:
        g = torch.Generator(common.device)
        g.set_state(state.clone())
        probs = predict(
            posterior, model, batches, num_samples=num_samples, scale=math.exp(log_scale),
            bn_loader=bn_loader, bn_batches=bn_batches, input_fn=input_fn,
            device=device, generator=g,
        )  # fmt: skip
        return nll(probs.cpu(), targets)

    a, b = math.log(lo), math.log(hi)
    steps = max(math.ceil(math.log(tol / (b - a)) / math.log(_INV_PHI)), 0) + 2
    bar = tqdm(total=steps, desc="fit_scale", unit="BMA", disable=not progress)

    def evaluate(u: float) -> float:
        value = objective(u)
        bar.update()
        bar.set_postfix(scale=f"{math.exp(u):.3g}", nll=f"{value:.4f}")
        return value

    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = evaluate(c), evaluate(d)
    values = [fc, fd]
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = evaluate(c)
            values.append(fc)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = evaluate(d)
            values.append(fd)
    bar.close()
    best = c if fc <= fd else d
    if max(values) - min(values) <= _FLAT * max(1.0, abs(min(values))):
        warnings.warn(
            f"fit_scale: the objective is flat (the validation NLL is {min(values):.6g} at every "
            "scale tried): the posterior has no spread (a point, or identical iterates), so the "
            "scale changes nothing and the returned value is arbitrary; widening bounds will "
            "not help",
            RuntimeWarning,
            stacklevel=2,
        )
    elif best - math.log(lo) < tol or math.log(hi) - best < tol:
        warnings.warn(
            f"fit_scale: the fitted scale {math.exp(best):.4g} is at the edge of bounds={bounds}; "
            "the optimum may lie outside them: widen bounds",
            RuntimeWarning,
            stacklevel=2,
        )
    return math.exp(best)


def _check_bounds(bounds: object) -> tuple[float, float]:
    """``bounds`` as ``(lo, hi)``, two real numbers with ``0 < lo < hi < inf``."""
    if (
        not isinstance(bounds, Sequence)
        or isinstance(bounds, str)
        or len(bounds) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bounds)
    ):
        raise ValueError(
            f"bounds must be a pair (lo, hi) of numbers with 0 < lo < hi < inf, got {bounds!r}"
        )
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 < lo < hi < math.inf:
        raise ValueError(f"bounds must satisfy 0 < lo < hi < inf, got {bounds}")
    return lo, hi


def _second(batch: Any) -> Tensor:
    """The targets of an ``(inputs, targets)`` batch."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise ValueError(
        "fit_scale: val_loader batches must be (inputs, targets) tuples; "
        "pass target_fn= (and input_fn=) for other batch formats"
    )
