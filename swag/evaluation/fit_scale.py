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
    >>> 0.35 < s < 0.7  # a float, with the evaluated (scale, NLL) pairs in s.curve
    True
    >>> len(s.curve)
    12
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
from swag.evaluation._loop import check_call, default_num_samples, run, warn_uneven
from swag.evaluation._options import Head, PredictOptions, legacy_keywords
from swag.evaluation.metrics import gaussian_nll, nll

__all__ = ["ScaleFit", "fit_scale"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the golden-section ratio
_FLAT = 1e-9  # relative spread of the NLLs tried below which the objective is flat (rounding)


class ScaleFit(float):
    """:func:`fit_scale`'s result: the fitted scale, a ``float``, with the evaluated curve.

    A ``float`` subclass, so code that used the scale as a number (``predict(scale=s)``,
    arithmetic, formatting, ``json``) keeps working.

    Attributes:
        scale: the fitted scale, as a plain ``float``.
        curve: every ``(scale, nll)`` evaluated by the search, sorted by scale: the validation
            NLL of the model average at each candidate (plot it to see how flat the optimum is).
    """

    scale: float
    curve: tuple[tuple[float, float], ...]

    def __new__(cls, scale: float, curve: Iterable[tuple[float, float]]) -> ScaleFit:
        out = super().__new__(cls, scale)
        out.scale = float(scale)
        out.curve = tuple(sorted((float(s), float(v)) for s, v in curve))
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScaleFit, (self.scale, self.curve))


@legacy_keywords("bn_loader", "bn_batches", "input_fn", "device", "progress", "diagonal")
def fit_scale(
    posterior: Posterior,
    model: nn.Module,
    val_loader: Iterable[Any],
    *,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    head: Head | None = None,
    options: PredictOptions | None = None,
    bounds: tuple[float, float] = (1e-2, 4.0),
    tol: float = 0.05,
    target_fn: Callable[[Any], Tensor] | None = None,
) -> ScaleFit:
    """The covariance scale minimising the validation NLL of ``posterior``'s model average.

    Golden-section search over ``log(scale)`` inside ``bounds`` until the bracket is narrower
    than ``tol`` (in log units: 0.05 ≈ 5% of the scale); about ``log(log(hi/lo)/tol)/log(1.618)
    + 2`` evaluations (12 with the defaults), each one :func:`swag.predict` over ``val_loader``
    with ``num_samples`` draws, the same ``head`` and ``options`` (its loop, its default
    ``input_fn``). Works for a :class:`~swag.SWAGPosterior` (``posterior.diagonal()`` for
    SWAG-Diag) and a :class:`~swag.MultiSWAG` (one scale shared by every member).

    Common random numbers: every candidate starts from a copy of ``generator``'s state, so all
    candidates see the same noise and the same dropout/BN-shuffle seed (a BN ``DataLoader``'s
    own generator included); ``generator`` itself is left untouched (use another one, or
    advance it, before predicting on test data).

    Args:
        posterior: the posterior whose scale is fitted (any :class:`~swag.Posterior`).
        model: the architecture, as for :func:`swag.predict`.
        val_loader: held-out ``(inputs, targets)`` batches in a fixed order (never the test
            set); other batch formats need ``options.input_fn`` and ``target_fn``.
        num_samples: draws per candidate scale, >= 1; the default is :func:`swag.predict`'s
            (30, rounded up to a multiple of a MultiSWAG's members). A MultiSWAG's
            ``num_samples`` that is not a multiple of its members warns.
        generator: source of the common random numbers, on any device; None draws their seed
            from the global RNG (``docs/concepts.md``, "Devices and generators").
        head: :class:`~swag.Classification` (default: the NLL of the averaged probabilities) or
            :class:`~swag.GaussianRegression` (the Gaussian NLL of the mixture's mean and
            variance), as for :func:`swag.predict`.
        options: :class:`~swag.PredictOptions`, as for :func:`swag.predict` (BN refresh, MC
            dropout, ``input_fn``, device); ``progress`` shows a bar over the evaluations and
            ``reduce`` must be True (the NLL scores the average).
        bounds: search interval ``(lo, hi)``, ``0 < lo < hi < inf``.
        tol: width in ``log(scale)`` at which the search stops, > 0.
        target_fn: maps a batch to its targets (default: its second item): ``(B,)`` integer
            classes, or the regression targets.

    Returns:
        A :class:`ScaleFit`: the fitted scale (a ``float``) with ``.scale`` and ``.curve``, the
        ``(scale, nll)`` pairs evaluated. When it lies within ``tol`` of the upper bound, a
        ``RuntimeWarning`` says the optimum may lie above it (widen ``bounds``); at the lower
        bound it says the mean alone (SWA, ``posterior.swa()``) is best; when every scale
        tried gives the same NLL (a posterior without spread), it says the objective is flat.

    Raises:
        ValueError: for bad ``num_samples``, ``bounds`` (not a pair ``(lo, hi)``) or ``tol``,
            ``options.reduce=False``, an empty ``val_loader``, or batches without targets.
        TypeError: for a ``num_samples`` that is not an integer (numpy integers are fine).
    """
    head, options, _ = check_call(
        posterior, model, val_loader, None, generator, head, options, "val_loader"
    )
    if num_samples is None:
        num_samples = default_num_samples(posterior, options.mc_dropout)
    check_count(num_samples, "num_samples")  # numpy integers are fine, as in predict
    warn_uneven(posterior, num_samples, stacklevel=4)
    lo, hi = _check_bounds(bounds)
    if not tol > 0.0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if not options.reduce:
        raise ValueError(
            "fit_scale scores the model average: options.reduce must be True, got False"
        )
    check_loader(val_loader, "val_loader")
    batches = list(val_loader)
    if not batches:
        raise ValueError(
            "val_loader yielded no batch: pass held-out (inputs, targets) batches, in a list "
            "or a re-iterable DataLoader"
        )
    targets = torch.cat([(target_fn or _second)(b) for b in batches]).cpu()
    if not posterior.scalable:
        raise ValueError(
            f"fit_scale: scale has no effect on a {type(posterior).__name__} (no covariance to "
            "scale); calibrate it with swag.fit_temperature instead"
        )
    common = common_generator(posterior.mean.device, generator)
    state = common.get_state()
    quiet = PredictOptions(
        bn=options.bn,
        mc_dropout=options.mc_dropout,
        input_fn=options.input_fn,
        device=options.device,
    )  # the bar is over the evaluations, not each one's samples

    def objective(log_scale: float) -> float:
        g = torch.Generator(common.device)
        g.set_state(state.clone())
        out = run(posterior, model, batches, num_samples, math.exp(log_scale), g, head, quiet)
        if isinstance(out, tuple):
            return gaussian_nll(out[0].cpu(), out[1].cpu(), targets.to(out[0].dtype))
        return nll(out.cpu(), targets)

    a, b = math.log(lo), math.log(hi)
    steps = max(math.ceil(math.log(tol / (b - a)) / math.log(_INV_PHI)), 0) + 2
    bar = tqdm(total=steps, desc="fit_scale", unit="BMA", disable=not options.progress)
    curve: list[tuple[float, float]] = []

    def evaluate(u: float) -> float:
        value = objective(u)
        curve.append((math.exp(u), value))
        bar.update()
        bar.set_postfix(scale=f"{math.exp(u):.3g}", nll=f"{value:.4f}")
        return value

    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = evaluate(c), evaluate(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = evaluate(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = evaluate(d)
    bar.close()
    best = c if fc <= fd else d
    values = [v for _, v in curve]
    if max(values) - min(values) <= _FLAT * max(1.0, abs(min(values))):
        warnings.warn(
            f"fit_scale: the objective is flat (the validation NLL is {min(values):.6g} at every "
            "scale tried): the posterior has no spread (a point, or identical iterates), so the "
            "scale changes nothing and the returned value is arbitrary; widening bounds will "
            "not help",
            RuntimeWarning,
            stacklevel=3,
        )
    elif best - math.log(lo) < tol:
        warnings.warn(
            f"fit_scale: the fitted scale {math.exp(best):.4g} is at the lower edge of "
            f"bounds={bounds}: the validation NLL keeps falling as the scale shrinks, so the "
            "mean alone (SWA) is best here; predict with the SWA mean, "
            "swag.predict(posterior.swa(), model, loader, options=...)",
            RuntimeWarning,
            stacklevel=3,
        )
    elif math.log(hi) - best < tol:
        warnings.warn(
            f"fit_scale: the fitted scale {math.exp(best):.4g} is at the upper edge of "
            f"bounds={bounds}; the optimum may lie above it: widen bounds",
            RuntimeWarning,
            stacklevel=3,
        )
    return ScaleFit(math.exp(best), curve)


def _check_bounds(bounds: object) -> tuple[float, float]:
    """``bounds`` as ``(lo, hi)``, two real numbers with ``0 < lo < hi < inf``."""
    if (
        not isinstance(bounds, Sequence)
        or isinstance(bounds, str)
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bounds)
    ):
        raise TypeError(
            f"bounds must be a pair (lo, hi) of numbers with 0 < lo < hi < inf, got {bounds!r}"
        )
    if len(bounds) != 2:
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
        "pass target_fn= (and options=swag.PredictOptions(input_fn=...)) for other batch "
        "formats"
    )
