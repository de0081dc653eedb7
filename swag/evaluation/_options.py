"""predict's option objects (the likelihood head, the evaluation options, the BatchNorm
refresh) and the mapping of the keywords of its old signature onto them.

The classes are public as ``swag.Classification``, ``swag.GaussianRegression``,
``swag.PredictOptions`` and ``swag.BNRefresh``; :func:`legacy_keywords` is shared by
:func:`swag.predict`, :func:`swag.fit_scale`, the landscape scans and the Hugging Face
``predict``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import torch
from torch import Tensor

from swag.core._checks import (
    check_bool,
    check_callable,
    check_count,
    check_device,
    check_loader,
)
from swag.core._initdoc import document_init
from swag.evaluation.bn import InputFn

OutputFn = Callable[[Any], Any]
_F = TypeVar("_F", bound=Callable[..., Any])


@document_init
@dataclass(frozen=True)
class Classification:
    """The classification head (the default): the model returns logits ``(B, ..., C)``.

    :func:`predict` averages their softmax over the sampled networks.

    Attributes:
        output_fn: maps the model's output to the logits, e.g. ``lambda out: out.logits`` for
            Hugging Face models (default: the output itself).
    """

    output_fn: OutputFn | None = None

    def __post_init__(self) -> None:
        check_callable(self.output_fn, "Classification.output_fn")


@document_init
@dataclass(frozen=True)
class GaussianRegression:
    """The Gaussian regression head: each network predicts N(μ, σ²) per target.

    The model returns ``(mean, variance)``, a tensor with last dimension 2 (``[..., 0]`` mean,
    ``[..., 1]`` variance, not log-variance: adapt with ``output_fn``), or only the mean when
    ``noise_var`` is given.

    Attributes:
        noise_var: fixed observation variance σ² for models that predict only a mean: a float
            or a tensor that broadcasts to one batch's mean, e.g. ``(D,)``; finite and >= 0.
        output_fn: maps the model's output to the head's input (default: the output itself).
    """

    noise_var: float | Tensor | None = None
    output_fn: OutputFn | None = None

    def __post_init__(self) -> None:
        check_callable(self.output_fn, "GaussianRegression.output_fn")
        noise = self.noise_var
        if noise is None:
            return
        if isinstance(noise, bool) or not isinstance(noise, (float, int, Tensor)):
            raise TypeError(
                "GaussianRegression.noise_var must be a float, a tensor or None, got "
                f"{type(noise).__name__}"
            )
        var = torch.as_tensor(noise)
        if not bool(torch.isfinite(var).all()) or bool((var < 0).any()):
            raise ValueError(
                f"GaussianRegression.noise_var must be finite and >= 0, got {noise!r}; pass the "
                "observation variance σ² (not σ, not log σ²)"
            )


Head = Classification | GaussianRegression
"""The likelihood head of :func:`predict`: a :class:`Classification` or a
:class:`GaussianRegression`."""


@document_init
@dataclass(frozen=True)
class BNRefresh:
    """Recompute BatchNorm running statistics for every sampled network (:func:`swag.update_bn`).

    Attributes:
        loader: training batches (a re-iterable loader: it is walked once per sampled network).
            A ``DataLoader`` with its own ``generator`` is reseeded from ``predict``'s
            ``generator`` (see :func:`predict`, Randomness).
        batches: refresh on only the first ``batches`` batches (default: all of them).
    """

    loader: Iterable[Any]
    batches: int | None = None

    def __post_init__(self) -> None:
        check_loader(self.loader, "BNRefresh.loader")
        check_count(self.batches, "BNRefresh.batches", optional=True)


@document_init
@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` evaluates each sampled network (shared by ``fit_scale``, the
    landscape scans and the benchmark).

    Attributes:
        bn: :class:`BNRefresh` (required when the model has BatchNorm or InstanceNorm with
            running statistics, :func:`swag.bn.has_batchnorm`), ``False`` to keep the model's
            current statistics (right only for the weights they were computed with), or None
            (an error for such a model; nothing to do otherwise).
        mc_dropout: keep every dropout live during evaluation, so each pass is a stochastic
            MC-dropout pass (:func:`predict`).
        input_fn: maps a batch to the model input (default :func:`swag.bn.default_input_fn`:
            a tensor as is, the first item of a tuple, a dict as keyword arguments,
            ``model(**batch)``). A ``{"x": ..., "y": ...}`` batch needs
            ``input_fn=lambda b: b["x"]``.
        device: move the working copy and the inputs here; results live on the output's device.
        reduce: average over samples (default) or return every sample.
        progress: show a progress bar over samples.
    """

    bn: BNRefresh | Literal[False] | None = None
    mc_dropout: bool = False
    input_fn: InputFn | None = None
    device: torch.device | str | None = None
    reduce: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        if self.bn is not None and self.bn is not False and not isinstance(self.bn, BNRefresh):
            raise TypeError(
                "PredictOptions.bn must be swag.BNRefresh(loader, batches=None), False or None, "
                f"got {type(self.bn).__name__}; wrap the training loader: "
                "bn=swag.BNRefresh(train_loader)"
            )
        for flag in ("mc_dropout", "reduce", "progress"):
            check_bool(getattr(self, flag), f"PredictOptions.{flag}")
        check_callable(self.input_fn, "PredictOptions.input_fn")
        check_device(self.device)


# The keywords predict took before the option objects: where each now lives.
_LEGACY = {
    "bn_loader": "options=swag.PredictOptions(bn=swag.BNRefresh(loader))",
    "bn_batches": "options=swag.PredictOptions(bn=swag.BNRefresh(loader, batches=...))",
    "input_fn": "options=swag.PredictOptions(input_fn=...)",
    "device": "options=swag.PredictOptions(device=...)",
    "reduce": "options=swag.PredictOptions(reduce=...)",
    "progress": "options=swag.PredictOptions(progress=...)",
    "mc_dropout": "options=swag.PredictOptions(mc_dropout=...)",
    "output_fn": "head=swag.Classification(output_fn=...) (or GaussianRegression(output_fn=...))",
    "output": "head=swag.Classification() or head=swag.GaussianRegression()",
    "noise_var": "head=swag.GaussianRegression(noise_var=...)",
    "diagonal": "posterior.diagonal() as the posterior",
}
_OPTION_FIELDS = ("input_fn", "device", "reduce", "progress", "mc_dropout")


def legacy_keywords(*names: str) -> Callable[[_F], _F]:
    """Accepts the keywords ``names`` of the old signature for one release, with a warning.

    Each one given raises a ``DeprecationWarning`` naming its new spelling (:data:`_LEGACY`) and
    is folded into ``options=`` / ``head=`` (``diagonal=True`` replaces the posterior by
    ``posterior.diagonal()``). The wrapped signature is the new one
    (``inspect.signature`` follows ``__wrapped__``).
    """
    unknown = set(names) - set(_LEGACY)
    if unknown:
        raise ValueError(f"no legacy mapping for {sorted(unknown)}")

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            old = {k: kwargs.pop(k) for k in names if k in kwargs}
            if old:
                args, kwargs = _translate(fn.__name__, args, kwargs, old)
            return fn(*args, **kwargs)

        return cast(_F, wrapper)

    return decorate


def _translate(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], old: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with the legacy keywords ``old`` folded into the new ones."""
    for key in old:
        warnings.warn(
            f"{name}({key}=...) is deprecated and will be removed in the next release; pass "
            f"{_LEGACY[key]} instead",
            DeprecationWarning,
            stacklevel=3,
        )
    options_keys = {"bn_loader", "bn_batches", *_OPTION_FIELDS}
    head_keys = {"output_fn", "output", "noise_var"}
    for keys, new in ((options_keys, "options"), (head_keys, "head")):
        clash = sorted(keys & set(old))
        if clash and kwargs.get(new) is not None:
            raise TypeError(
                f"{name} got both {new}= and the deprecated {', '.join(clash)}=; put them all "
                f"in {new}= ({_LEGACY[clash[0]]})"
            )
    if options_keys & set(old):
        fields = {k: old[k] for k in _OPTION_FIELDS if k in old}
        loader = old.get("bn_loader")
        if loader is False:
            fields["bn"] = False
        elif loader is not None:
            fields["bn"] = BNRefresh(loader, old.get("bn_batches"))
        kwargs["options"] = PredictOptions(**fields)
    if head_keys & set(old):
        output, noise, output_fn = (
            old.get("output", "probs"),
            old.get("noise_var"),
            old.get("output_fn"),
        )
        if not isinstance(output, str):
            raise TypeError(f"output must be the string 'probs' or 'gaussian', got {output!r}")
        if output not in ("probs", "gaussian"):
            raise ValueError(f"output must be 'probs' or 'gaussian', got {output!r}")
        if output == "probs" and noise is not None:
            raise ValueError("noise_var is for output='gaussian' only")
        kwargs["head"] = (
            Classification(output_fn) if output == "probs" else GaussianRegression(noise, output_fn)
        )
    if "diagonal" in old:
        check_bool(old["diagonal"], "diagonal")
        if old["diagonal"]:
            if args:
                args = (args[0].diagonal(), *args[1:])
            else:
                kwargs["posterior"] = kwargs["posterior"].diagonal()
    return args, kwargs
