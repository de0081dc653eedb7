"""BatchNorm refresh: recompute running statistics for a model's current weights."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from tqdm.auto import tqdm

from swag.core._checks import check_bool, check_callable, check_count, check_device, check_loader
from swag.evaluation._batches import call_model, move_to

__all__ = ["InputFn", "default_input_fn", "has_batchnorm", "update_bn"]

InputFn = Callable[[Any], Any]
"""Maps a batch to the model's input: a tensor, a tuple (positional) or a dict (keywords)."""


def default_input_fn(batch: Any) -> Any:
    """The model input of a batch: a tensor as is, the first item of a tuple/list, a dict as is.

    A dict is passed as keyword arguments (``model(**batch)``), as Hugging Face models expect.
    """
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("got an empty tuple/list batch; pass input_fn= to pick the input")
        return batch[0]
    return batch


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` needs a refresh: it has a norm layer that tracks running statistics.

    The one test of "does this model need ``bn_loader``", used by :func:`update_bn`,
    :func:`swag.predict`, :func:`swag.fit_scale`, the landscape and the Lightning callback.
    It covers every torch layer built on ``torch.nn.modules.batchnorm._NormBase`` with
    ``track_running_stats=True``: ``BatchNorm1d/2d/3d``, their ``Lazy`` forms, ``SyncBatchNorm``
    and ``InstanceNorm1d/2d/3d`` (and subclasses of these in other libraries). Layers of other
    libraries that keep running statistics without subclassing them are not seen: refresh
    them yourself (docs/concepts.md).
    """
    return bool(_refreshed(model))


def _refreshed(model: nn.Module) -> list[_NormBase]:
    """The layers whose running statistics :func:`update_bn` recomputes, in module order."""
    return [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]


@torch.no_grad()
def update_bn(
    loader: Iterable[Any],
    model: nn.Module,
    *,
    num_batches: int | None = None,
    input_fn: InputFn | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> None:
    """Recompute the running statistics of ``model``'s norm layers over ``loader``.

    The layers are those :func:`has_batchnorm` finds (BatchNorm, SyncBatchNorm, InstanceNorm
    with ``track_running_stats=True``). Statistics are reset, then accumulated as plain averages
    over the batches (momentum None; for InstanceNorm, which reads None as "no update", the
    momentum of batch k is 1/k to the same effect), as ``torch.optim.swa_utils.update_bn``
    does; momenta and the train/eval mode of every submodule are restored afterwards. If the
    loader yields nothing or raises, the previous statistics are put back before the error
    propagates. A model without such layers is left untouched and no batch is read.
    Statistics that come out NaN or infinite (NaN in the inputs, or activations that
    overflow) are refused the same way.

    Args:
        loader: batches; tensors, tuples/lists (first item is the input) or dicts (passed as
            keyword arguments).
        model: the network, modified in place.
        num_batches: stop after this many batches (default: the whole loader).
        input_fn: maps a batch to the model input (a tensor, a tuple of positional
            arguments, or a dict of keyword arguments).
        device: move inputs here before the forward pass.
        progress: show a progress bar.

    Raises:
        ValueError: if the loader yields nothing, or the statistics come out NaN or infinite.
        TypeError: for an argument of the wrong type (the message names it).
    """
    check_loader(loader, "loader", empty_ok=True)  # emptiness is found while reading it
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_count(num_batches, "num_batches", optional=True)
    check_callable(input_fn, "input_fn")
    check_device(device)
    check_bool(progress, "progress")
    layers = _refreshed(model)
    if not layers:
        return
    momenta = {m: m.momentum for m in layers}
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in layers]
    modes = {m: m.training for m in model.modules()}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    to_input = input_fn or default_input_fn
    batches = itertools.islice(loader, num_batches)
    seen = 0
    try:
        for batch in tqdm(batches, total=num_batches, desc="BN refresh", disable=not progress):
            for m in layers:
                if not isinstance(m, _BatchNorm):
                    # InstanceNorm reads momentum=None as 0 (no update): weigh batch k by 1/k,
                    # the plain average BatchNorm's momentum=None gives
                    m.momentum = 1.0 / (seen + 1)
            call_model(model, move_to(to_input(batch), device))
            seen += 1
        if seen == 0:
            raise ValueError(
                "the loader yielded no batch, so the BatchNorm statistics were left as they "
                "were; pass a loader of training batches (a list or a re-iterable DataLoader)"
            )
        bad = [m for m in layers if not _finite_stats(m)]
        if bad:
            raise ValueError(
                f"the BatchNorm statistics came out NaN or infinite ({len(bad)} of {len(layers)} "
                "layers), so the previous ones were put back: the loader's inputs hold NaN or "
                "inf, or the model's activations overflow with these weights"
            )
    except BaseException:
        for m, buffers in zip(layers, saved, strict=True):
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
        raise
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for module, training in modes.items():
            module.train(training)


def _finite_stats(layer: _NormBase) -> bool:
    stats = [t for t in (layer.running_mean, layer.running_var) if t is not None]
    return all(bool(torch.isfinite(t).all()) for t in stats)
