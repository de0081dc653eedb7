"""FGE and MultiSWA: ensembles of weight vectors, gathered flat, posing as posteriors.

Fast geometric ensembling (FGE, Garipov et al. 2018) keeps the weights at the low-rate points
of a short cyclical schedule and ensembles them; :class:`Snapshots` stores them in one
preallocated ``(M, P)`` buffer (no model copies) and :meth:`Snapshots.posterior` turns them
into an equal-weight :class:`~swag.MultiSWAG` of :class:`~swag.PointPosterior` s, which
:func:`swag.predict`, the metrics and ``save``/``load`` take as they are. MultiSWA
(:func:`multi_swa`) is the same mixture over the SWA means of independent runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from swag.core._checks import check_count, check_device
from swag.core._posterior_base import Posterior
from swag.core.collector import Collector
from swag.core.layout import ParamLayout, ParamSelector
from swag.core.multiswag import MultiSWAG
from swag.core.point import PointPosterior
from swag.persistence import _io
from swag.persistence._checked_state import CheckedState

__all__ = ["Snapshots", "multi_swa"]


class Snapshots(CheckedState):
    """Up to ``max_snapshots`` copies of a model's parameters, as rows of one flat buffer.

    ``collect()`` copies the covered parameters into the next row (``P`` elements, no
    allocation); call it where a :class:`~swag.schedules.Cyclic` schedule's ``collect`` says,
    as you would :meth:`swag.Collector.collect`. Only parameters are stored: a BatchNorm model's
    running statistics are recomputed per member by :func:`swag.predict`
    (``options=PredictOptions(bn=BNRefresh(...))``).

    Memory: ``max_snapshots · P`` elements, allocated at creation. An ``nn.Module``: ``.to()``
    and ``state_dict()`` (buffer and count) work as for :class:`~swag.Collector`: device moves
    reach the buffer, casts such as ``model.half()`` leave its dtype (attached to a model, the
    snapshots are not rounded to the weights' dtype). To resume a run from a file, :meth:`save`
    and :meth:`load` (safetensors, validated).

    Args:
        model: the network being trained (only a reference is kept).
        max_snapshots: M, the number of rows.
        params: which parameters to cover, as for :class:`~swag.Collector`.
        device: where the buffer lives (default: the parameters' device).
        dtype: its dtype (default: the widest covered parameter dtype, so snapshots are exact).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``dtype`` not a ``torch.dtype``.
        ValueError: if ``max_snapshots`` is not an int >= 1, ``params`` selects nothing, or
            ``dtype`` is not floating-point.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> snaps = Snapshots(model, max_snapshots=4)
        >>> for _ in range(3):
        ...     _ = model.weight.data.add_(0.1)  # stands in for a cycle of training
        ...     snaps.collect()
        >>> fge = snaps.posterior()
        >>> len(fge), fge.sample((3,)).shape
        (3, torch.Size([3, 8]))
    """

    snapshots: Tensor

    _state_name = "snapshots"

    def __init__(
        self,
        model: nn.Module,
        max_snapshots: int,
        *,
        params: ParamSelector = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_model("model", model)
        check_device(device)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
        check_count(max_snapshots, "max_snapshots")
        self.layout = ParamLayout.from_model(model, params)
        tensors = self.layout.resolve(model)
        dtype = dtype or functools.reduce(torch.promote_types, self.layout.dtypes)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        device = device or tensors[0].device
        self.register_buffer(
            "snapshots", torch.zeros(max_snapshots, self.layout.size, dtype=dtype, device=device)
        )
        self._n = 0
        self.__dict__["_model"] = model  # a plain reference: not a submodule, not in state_dict

    @property
    def max_snapshots(self) -> int:
        """M, the number of rows of the ``(M, P)`` buffer."""
        return self.snapshots.shape[0]

    @property
    def n(self) -> int:
        """The number of snapshots taken."""
        return self._n

    @torch.no_grad()
    def collect(self, model: nn.Module | None = None) -> None:
        """Copy the covered parameters of ``model`` (default: the one given at creation).

        Raises:
            TypeError: if ``model`` is not an ``nn.Module``.
            RuntimeError: if all ``max_snapshots`` rows are taken.
            ValueError: if the parameters no longer match the layout or hold NaN/inf; nothing
                is recorded.
        """
        if self._n == self.max_snapshots:
            raise RuntimeError(
                f"all {self.max_snapshots} snapshots are taken; create Snapshots with a larger "
                "max_snapshots, or take fewer (e.g. collect every other cycle)"
            )
        if model is not None:
            _check_model("model", model)
        pieces = [t.reshape(-1) for t in self.layout.resolve(model or self.__dict__["_model"])]
        row = self.snapshots[self._n]
        ParamLayout.gather(pieces, row)
        if not bool(row.isfinite().all()):
            bad = [
                n for n, t in zip(self.layout.names, pieces, strict=True) if not t.isfinite().all()
            ]
            raise ValueError(
                f"snapshot {self._n + 1} has NaN or inf in {bad[:5]}; nothing was recorded. "
                "Lower the learning rate."
            )
        self._n += 1

    @property
    def mean(self) -> Tensor:
        """``(P,)``, the average of the snapshots taken (computed in float64): their SWA."""
        self._require_some()
        return self.snapshots[: self._n].double().mean(0).to(self.snapshots.dtype)

    def posterior(self) -> MultiSWAG:
        """The FGE ensemble: an equal-weight mixture of the ``n`` snapshots (copied)."""
        self._require_some()
        rows = self.snapshots[: self._n].clone()
        return MultiSWAG([PointPosterior(row, self.layout) for row in rows])

    def swa(self) -> PointPosterior:
        """The SWA solution of the same snapshots (one network: one model's test cost)."""
        return PointPosterior(self.mean, self.layout)

    def _require_some(self) -> None:
        if self._n == 0:
            raise RuntimeError("no snapshot taken yet: call collect() at least once first")

    def get_extra_state(self) -> dict[str, Any]:
        return {"n": self._n, "layout": self.layout.to_json()}

    def set_extra_state(self, state: Any) -> None:
        self._n = int(state["n"])  # checked (_state_problem) before anything was copied

    def _state_problem(self, state_dict: dict[str, Any], prefix: str) -> str | None:
        """What is wrong with a state for this object, or None if it can be loaded."""
        extra, rows = state_dict.get(prefix + "_extra_state"), state_dict.get(prefix + "snapshots")
        if not isinstance(extra, dict) or not {"n", "layout"} <= extra.keys():
            return "its _extra_state (n, layout) is missing or damaged"
        try:
            diff = self.layout.mismatch(ParamLayout.from_json(extra["layout"]))
        except (TypeError, ValueError, KeyError, IndexError) as err:
            return f"its layout is damaged ({err})"
        if diff:
            return f"parameter layout differs: {diff}"
        if not isinstance(rows, Tensor) or rows.shape != self.snapshots.shape:
            shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
            return (
                f"its snapshots are {shape}, here {tuple(self.snapshots.shape)} "
                "(create Snapshots with the same model and max_snapshots)"
            )
        n = extra["n"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.max_snapshots:
            return f"its count n={n!r} is not an int in [0, {self.max_snapshots}]"
        if not bool(rows[:n].isfinite().all()):
            return "its snapshots hold NaN or inf (a damaged file)"
        return None

    def save(self, path: _io.PathLike) -> None:
        """Write the buffer and count to ``path`` (safetensors, atomic), to resume a run."""
        _check_path(path)
        meta = {"n": str(self._n), "layout": self.layout.to_json()}
        _io.save_file(path, "snapshots", {"snapshots": self.snapshots}, meta)

    @classmethod
    def load(
        cls, path: _io.PathLike, model: nn.Module, *, device: torch.device | str | None = None
    ) -> Snapshots:
        """Resume :class:`Snapshots` saved with :meth:`save`, attached to ``model``.

        The buffer keeps its saved ``(M, P)`` shape and dtype; ``model`` must have the saved
        parameters (names, shapes, dtypes).

        Raises:
            ValueError: if the file is damaged or foreign, or does not fit ``model``.
        """
        _check_path(path)
        _check_model("model", model)
        check_device(device)
        tensors, meta = _io.load_file(path, "snapshots")
        _io.expect_tensors(tensors, ["snapshots"], path)
        rows = tensors.get("snapshots")
        if rows is None or rows.dim() != 2:
            raise ValueError(f"{path} lacks a 2-d tensor 'snapshots'; the file is damaged")
        text = _io.require(meta, "layout", path)
        layout = ParamLayout.from_metadata(
            meta, "layout", path
        )  # checked row by row, naming the file
        n = _io.int_field(meta, "n", path, low=0, high=rows.shape[0])
        if not rows.dtype.is_floating_point or rows.shape[0] < 1:
            raise ValueError(
                f"{path}: its snapshots are {rows.dtype} {tuple(rows.shape)}, not a floating "
                "(M, P) buffer with M >= 1; the file is damaged"
            )
        try:
            snaps = cls(
                model, rows.shape[0], params=list(layout.names), device=device, dtype=rows.dtype
            )
        except ValueError as err:
            raise ValueError(f"{path} does not fit model: {err}") from None
        problem = snaps._state_problem(
            {"snapshots": rows, "_extra_state": {"n": n, "layout": text}}, ""
        )
        if problem:
            raise ValueError(f"{path} cannot be loaded: {problem}")
        snaps.snapshots.copy_(rows)
        snaps._n = n
        return snaps

    def extra_repr(self) -> str:
        return f"P={self.layout.size}, n={self._n}/{self.max_snapshots}"


def multi_swa(runs: Sequence[Collector | Snapshots | Posterior]) -> MultiSWAG:
    """MultiSWA: the equal-weight mixture of the SWA means of independent runs.

    Each run's mean (a :class:`~swag.Collector`'s or :class:`Snapshots`' average, or a
    posterior's ``mean``) becomes one :class:`~swag.PointPosterior`; the result is a deep
    ensemble of SWA solutions, one pass per member in :func:`swag.predict`.

    Raises:
        TypeError: if a run is none of these.
        ValueError: if ``runs`` is empty, a run collected nothing, or the runs cover different
            parameters.
    """
    if isinstance(runs, (str, bytes, nn.Module)) or not isinstance(runs, Iterable):
        raise TypeError(
            f"runs must be a list of Collector, Snapshots or posteriors, got {type(runs).__name__}"
        )
    runs = list(runs)
    if not runs:
        raise ValueError("multi_swa needs at least one run, got none")
    for i, run in enumerate(runs):
        if not isinstance(run, Collector | Snapshots) and not isinstance(
            getattr(run, "mean", None), Tensor
        ):
            raise TypeError(
                f"runs[{i}] must be a Collector, Snapshots or posterior, got {type(run).__name__}"
            )
        if isinstance(run, Collector | Snapshots) and run.n == 0:
            raise ValueError(
                f"runs[{i}] collected nothing (its mean would be all zeros); call collect() "
                "during its run, or leave it out"
            )
    return MultiSWAG([PointPosterior(run.mean.clone(), run.layout) for run in runs])


def _check_model(name: str, model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be the nn.Module being trained, got {type(model).__name__}")


def _check_path(path: object) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
