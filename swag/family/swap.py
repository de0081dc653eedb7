"""SWAP, stochastic weight averaging in parallel (Gupta, Akle Serrano and DeCoste, ICLR 2020).

Three phases on ``W`` workers of a ``torch.distributed`` job (gloo on CPU, NCCL on GPU):

1. **Large batches, synchronous**: the usual data-parallel training (DDP: one gradient
   all-reduce per step) with a global batch of ``W · b``, until the training accuracy reaches a
   threshold. :meth:`SWAP.reached` makes every rank take that decision from the same number.
2. **Small batches, independent**: each worker continues alone from the same weights, with its
   own data order and seed, and makes no collective call. Train the plain module (``ddp.module``),
   not the DDP wrapper, whose backward would all-reduce. Wrap the phase in
   :meth:`SWAP.independent` so that a failure there reaches the other ranks.
3. **Average**: :meth:`SWAP.average` averages the ``W`` workers' weights exactly (a float64
   all-reduce, rounded once) and recomputes BatchNorm statistics with :func:`swag.update_bn`.

Synchronisations: one per phase-1 step (plus one per threshold check), none in phase 2, two
in phase 3 (a status exchange, then the average). A :class:`swag.Collector` can run on each
worker in phase 2; :func:`swag.distributed.gather_multiswag` then mixes the workers' SWAG
posteriors into one :class:`swag.MultiSWAG`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from swag.core._checks import check_loader, check_real
from swag.evaluation.bn import update_bn

__all__ = ["SWAP"]

_MESSAGE = 512  # bytes of a failure message carried by the status exchange
_MAX_TIMEOUT = 1e9  # seconds (31 years): datetime.timedelta overflows far above
_DIGEST = 32  # bytes of the SHA-256 of the rank's layout, carried with it


class SWAP:
    """Coordinates SWAP's three phases on one rank. Construct it on every rank of the job.

    Args:
        model: the network, or its DDP wrapper (the wrapped module is used).
        process_group: the workers (default: the default group).
        timeout: seconds a rank waits at the end of phase 2 for the others; a rank that is
            slower than that, or dead, makes every other rank raise instead of hanging. It
            must exceed the largest difference in phase-2 time between workers.

    Attributes:
        syncs: collective calls this helper made on this rank (threshold checks and phase 3).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        process_group: dist.ProcessGroup | None = None,
        timeout: float = 300.0,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "SWAP needs an initialised process group: call "
                "torch.distributed.init_process_group first (or run under torchrun)"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or its DDP wrapper, got {type(model)}")
        timeout = check_real(timeout, "timeout (seconds)", minimum=0, strict=True)
        if timeout > _MAX_TIMEOUT:
            raise ValueError(f"timeout must be at most {_MAX_TIMEOUT:g} seconds, got {timeout:g}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = cast(nn.Module, model.module)
        self.model = model
        self.group = process_group or dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.timeout = timeout
        # status messages travel on their own CPU (gloo) group with a bounded timeout, so that
        # they work beside NCCL and a dead peer turns into an error, not a hang
        ranks = dist.get_process_group_ranks(self.group)
        self._status = dist.new_group(ranks, timeout=timedelta(seconds=timeout), backend="gloo")
        self.syncs = 0

    def reached(self, correct: float, total: float, threshold: float) -> bool:
        """Whether the training accuracy over all ranks, Σcorrect / Σtotal, is ≥ ``threshold``.

        One all-reduce of two numbers; every rank gets the same answer, so they all leave
        phase 1 at the same step.
        """
        correct = check_real(correct, "correct", minimum=0)
        total = check_real(total, "total", minimum=0)
        if correct > total:
            raise ValueError(f"correct must be <= total, got correct={correct}, total={total}")
        if not 0 < check_real(threshold, "threshold") <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        counts = torch.tensor([correct, total], dtype=torch.float64)
        dist.all_reduce(counts, group=self._status)
        self.syncs += 1
        return bool(counts[1] > 0 and counts[0] / counts[1] >= threshold)

    @contextlib.contextmanager
    def independent(self) -> Iterator[None]:
        """Phase 2. If the body raises, the other ranks learn it in :meth:`average`.

        The failing rank sends its error's type and message to every rank, then re-raises it;
        the others raise a ``RuntimeError`` naming the rank and the error.
        """
        try:
            yield
        except Exception as exc:
            with contextlib.suppress(RuntimeError):  # the others may be gone too
                self._exchange(f"{type(exc).__name__}: {exc}")
            raise

    def _exchange(self, message: str, digest: bytes = bytes(_DIGEST)) -> list[tuple[str, bytes]]:
        """Every rank's status message ("" = fine) and layout digest, in rank order.

        One all_gather of ``2 + _MESSAGE + _DIGEST`` bytes per rank.
        """
        blob = message.encode()[:_MESSAGE]
        mine = torch.zeros(_MESSAGE + 2 + _DIGEST, dtype=torch.uint8)
        mine[0], mine[1] = len(blob) >> 8, len(blob) & 0xFF
        if blob:
            mine[2 : 2 + len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        mine[-_DIGEST:] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        try:
            dist.all_gather(every, mine, group=self._status)
        except RuntimeError as exc:
            raise RuntimeError(
                f"SWAP: rank {self.rank} did not hear from every rank within {self.timeout:g} s "
                "at the end of phase 2: a worker died or is still training (if phase 2 is "
                f"that much slower on some workers, raise timeout=). Cause: {exc}"
            ) from exc
        self.syncs += 1
        out = []
        for t in every:
            n = (int(t[0]) << 8) | int(t[1])
            text = bytes(t[2 : 2 + n].tolist()).decode(errors="replace")
            out.append((text, bytes(t[-_DIGEST:].tolist())))
        return out

    def _layout(self, with_buffers: bool) -> tuple[list[torch.Tensor], str]:
        """The tensors :meth:`average` averages, and their layout (names, shapes, dtypes)."""
        named: list[tuple[str, str, torch.Tensor]] = [
            ("parameter", n, t) for n, t in self.model.named_parameters()
        ]
        if with_buffers:
            named += [("buffer", n, t) for n, t in self.model.named_buffers()]
        picked = [(kind, n, t) for kind, n, t in named if t.is_floating_point()]
        lines = [f"{kind} {n} {tuple(t.shape)} {t.dtype}" for kind, n, t in picked]
        return [t for _, _, t in picked], "\n".join(lines)

    @torch.no_grad()
    def average(
        self,
        bn_loader: Iterable[Any] | None = None,
        *,
        bn_batches: int | None = None,
        input_fn: Callable[[Any], Any] | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """Phase 3: average the workers' weights in place and recompute BatchNorm.

        The mean of the ``W`` float32 values of each weight is taken in float64 (exact for any
        realistic spread of magnitudes) and rounded once to the parameter's dtype, so every
        rank ends with the same, correctly rounded average. With ``bn_loader`` the BatchNorm
        running statistics are then recomputed by :func:`swag.update_bn` (pass the same
        batches on every rank to keep the ranks identical); without it, floating-point
        buffers are averaged like the weights.

        Before any collective on the weights, the ranks compare the layout of what they
        average (names, shapes and dtypes, as a SHA-256 carried by the status exchange), so
        models that differ are refused on every rank instead of averaged element by element.

        Raises:
            TypeError: if ``bn_loader`` is not iterable (checked before any collective).
            RuntimeError: on every rank, if a rank failed in :meth:`independent` (naming it and
                its error), or did not reach this point within ``timeout`` seconds.
            ValueError: on every rank, if the ranks' models differ in parameter (or, without
                ``bn_loader``, buffer) names, shapes or dtypes; nothing is averaged.
        """
        if bn_loader is not None:
            check_loader(bn_loader, "bn_loader")
        tensors, layout = self._layout(with_buffers=bn_loader is None)
        statuses = self._exchange("", hashlib.sha256(layout.encode()).digest())
        failed = {r: m for r, (m, _) in enumerate(statuses) if m}
        if failed:
            what = "; ".join(f"rank {r}: {m}" for r, m in failed.items())
            raise RuntimeError(f"SWAP phase 2 failed, nothing was averaged ({what})")
        digests = [d for _, d in statuses]
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(
                f"SWAP: the model on rank(s) {differ} differs from rank 0's in parameter or "
                "buffer names, shapes or dtypes, so nothing was averaged; build the same model "
                f"(and cast it the same way) on every rank. Rank {self.rank} has "
                f"{len(tensors)} tensors, {sum(t.numel() for t in tensors)} elements"
            )
        if tensors:
            flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
            dist.all_reduce(flat, group=self.group)
            self.syncs += 1
            flat /= self.world
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        if bn_loader is not None:
            update_bn(
                bn_loader, self.model, num_batches=bn_batches, input_fn=input_fn, device=device
            )
        return self.model
