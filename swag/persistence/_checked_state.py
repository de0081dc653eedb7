"""State that loads whole or not at all and keeps its dtype, for the modules holding statistics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class CheckedState(nn.Module, ABC):
    """Buffers that keep their dtype under casts; a state that loads whole or not at all.

    ``.to(device)``, ``.cuda()`` and ``.cpu()`` move the buffers, but casts (``model.half()``,
    ``model.to(torch.bfloat16)``, ``.double()``) leave their dtype alone: an object attached to a
    model as a submodule would otherwise be rounded to a dtype chosen for the weights.

    ``load_state_dict`` validates the whole state before copying any of it, and always copies.
    A refused or partial state (also under ``strict=False``) changes nothing: a mix of two
    states would be a wrong posterior. ``assign=True`` still copies: assigned buffers would
    share memory with the state's tensors (another module's, when the state came from its
    ``state_dict()``), and collecting into one would silently change the other.
    """

    _state_name: str  # in the error: "cannot load {_state_name}: ..."

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CheckedState:
        """Let device moves (``.to(device)``, ``.cuda()``) reach the buffers, not dtype casts.

        An attached holder (a submodule of the model) would otherwise follow ``model.half()``
        or ``model.to(torch.bfloat16)``, rounding its statistics to a dtype chosen for the
        weights. Each buffer goes where ``fn`` sends it, in its own dtype.
        """

        def move(t: Tensor) -> Tensor:
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            return fn(t) if probe.dtype == t.dtype else t.to(probe.device)

        apply: Callable[..., Any] = super()._apply  # untyped in torch's stubs
        apply(move, recurse)
        return self

    @abstractmethod
    def _state_problem(self, state_dict: dict[str, Any], prefix: str) -> str | None:
        """What is wrong with ``state_dict`` for this module, in words; ``None`` if it fits."""

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        problem = self._state_problem(state_dict, prefix)
        if problem:
            error_msgs.append(f"cannot load {self._state_name}: {problem}; nothing was loaded")
            return
        local_metadata = {**local_metadata, "assign_to_params_buffers": False}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
