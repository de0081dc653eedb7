"""The compiled collect: one steady-state update as a single graph for ``torch.compile``."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor


def fused_step(
    thetas: list[Tensor],
    shifts: list[Tensor],
    means: list[Tensor],
    m2s: list[Tensor],
    slots: list[Tensor] | None,
    weight: Tensor,
    factor: Tensor,
) -> Tensor:
    """One steady-state collect as a single graph, for ``torch.compile`` to fuse into one pass.

    The same arithmetic as the eager path, per parameter (the lists are views of the flat
    buffers, one per parameter). Every write is ``where(finite, new, old)``: if any θ is NaN/inf
    the state is rewritten unchanged, and the returned flag says so. It runs only when θ has the
    statistics' dtype, so θ is what is written (no cast that could overflow).
    """
    finite = torch.stack([t.sum(dtype=torch.float32) for t in thetas]).isfinite().all()
    for i, theta in enumerate(thetas):
        x = theta - shifts[i]  # θ_n − θ_1
        mean = torch.lerp(means[i], x, weight)
        dev = x - mean  # θ_n − θ̄_n
        means[i].copy_(torch.where(finite, mean, means[i]))
        m2s[i].copy_(torch.where(finite, m2s[i] + factor * dev * dev, m2s[i]))
        if slots is not None:
            slots[i].copy_(torch.where(finite, dev, slots[i]))
    return finite


def compiled_step(backend: str = "inductor") -> Callable[..., Tensor]:
    """A new compiled :func:`fused_step`, with a dynamo cache of its own.

    Dynamo keeps its compiled graphs (and counts recompiles against
    ``torch._dynamo.config.recompile_limit``, 8) per code object. Each collector compiles its
    own copy of the code, so collectors of different shapes do not share, and exhaust, one
    cache, and the graphs are freed with the collector that holds them.
    """
    code = fused_step.__code__.replace()  # an equal but distinct code object
    fresh = types.FunctionType(code, fused_step.__globals__, fused_step.__name__)
    compiled: Callable[..., Tensor] = torch.compile(
        fresh, fullgraph=True, dynamic=False, backend=backend
    )
    return compiled


class CompiledCollect:
    """The fused collect of one collector, compiled on first use (:func:`compiled_step`)."""

    def __init__(self) -> None:
        self._step: Callable[..., Tensor] | None = None

    def __call__(
        self,
        flats: list[Tensor],
        stats: tuple[Tensor, Tensor, Tensor, Tensor | None],
        spans: list[slice],
        n: int,
    ) -> bool | None:
        """Collect iterate ``n``: True if done, False if θ has NaN/inf (nothing written).

        ``stats`` are the flat ``shift``, ``shifted_mean``, ``m2`` ``(P,)`` and the ring slot
        ``(P,)`` of this iterate (None without a ring); ``spans`` cut them per parameter.
        None, with a ``RuntimeWarning`` saying why, if it cannot compile (no C++ compiler,
        an unsupported platform): the caller then keeps to its eager path.
        """
        shift, mean, m2, slot = stats
        try:
            self._step = self._step or compiled_step()
            finite = self._step(
                flats,
                [shift[span] for span in spans],
                [mean[span] for span in spans],
                [m2[span] for span in spans],
                None if slot is None else [slot[span] for span in spans],
                torch.tensor(1.0 / n, device=m2.device, dtype=m2.dtype),
                torch.tensor(n / (n - 1), device=m2.device, dtype=m2.dtype),
            )
        except Exception as exc:  # no compiler, unsupported platform: keep the eager path
            warnings.warn(
                f"compiled collect is unavailable ({type(exc).__name__}: {exc}); "
                "using the eager path",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return bool(finite)
