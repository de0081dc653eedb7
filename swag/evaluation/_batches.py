"""Batches of any shape: moving every tensor inside to a device, and calling a model on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def move_to(obj: Any, device: torch.device | str | None) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple, else ``model(inputs)``.

    A dict whose keys ``forward`` does not take (``{"x": ..., "y": ...}``: the targets too)
    re-raises the ``TypeError`` with the fix: pick the input with ``input_fn``.
    """
    if isinstance(inputs, Mapping):
        try:
            return model(**inputs)
        except TypeError as err:
            if "unexpected keyword argument" not in str(err):
                raise
            raise TypeError(
                f"{err}. A dict batch is passed as keyword arguments, model(**batch): every key "
                f"must be an argument of forward (the batch's keys: {sorted(map(str, inputs))}). "
                "For a batch that also holds the targets, e.g. {'x': ..., 'y': ...}, pick the "
                "input with input_fn=lambda b: b['x'] (swag.PredictOptions(input_fn=...) for "
                "predict and fit_scale, input_fn= for update_bn)"
            ) from err
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)
