"""A zero-variance posterior: one weight vector (SGD or SWA weights) posing as a distribution."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from swag.core._initdoc import document_init
from swag.core._posterior_base import Posterior, State
from swag.core.layout import ParamLayout, ParamSelector
from swag.persistence import _io

__all__ = ["PointPosterior"]

_KIND = "point_posterior"


@document_init
@dataclass(frozen=True, eq=False)
class PointPosterior(Posterior):
    """A point mass at ``mean``: the SGD solution, or the SWA mean without its covariance.

    It speaks the same protocol as :class:`~swag.SWAGPosterior`, so :func:`swag.predict` treats
    SGD, SWA and SWAG alike, and ``MultiSWAG([PointPosterior, ...])`` is a deep ensemble.
    Its covariance is zero, so ``scale`` is checked and has no effect (``scale · 0 = 0``), and
    it is its own :meth:`diagonal` view.

    Attributes:
        mean: θ ``(P,)``, the weights.
        layout: which model parameters the P entries are.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> point = PointPosterior.from_model(model)
        >>> point.sample((4,)).shape
        torch.Size([4, 8])
    """

    kind = _KIND
    mean: Tensor
    layout: ParamLayout

    def __post_init__(self) -> None:
        size = self.layout.size
        if self.mean.shape != (size,):
            raise ValueError(
                f"mean must have shape ({size},) to match the layout, got {tuple(self.mean.shape)}"
            )
        if not self.mean.is_floating_point():
            raise ValueError(f"mean must be floating point, got {self.mean.dtype}")

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        params: ParamSelector = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PointPosterior:
        """A copy of ``model``'s current weights as a point posterior.

        Args:
            model: the network (e.g. after SGD training, or holding the SWA weights).
            params: which parameters to cover, as for :class:`~swag.Collector` (default: every
                floating-point parameter with ``requires_grad``).
            device: where the vector lives (default: the first covered parameter's device).
            dtype: its dtype (default: the widest dtype among the covered parameters, so the
                weights are held exactly).
        """
        layout = ParamLayout.from_model(model, params)
        pieces = [t.reshape(-1) for t in layout.resolve(model)]
        dtype = dtype or functools.reduce(torch.promote_types, layout.dtypes)
        out = torch.empty(layout.size, dtype=dtype, device=device or pieces[0].device)
        return cls(ParamLayout.gather(pieces, out), layout)

    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        """The mean, repeated: ``(*shape, P)``, a new tensor; ``generator`` is not advanced."""
        return self.mean.expand(*shape, self.layout.size).clone()

    @property
    def scalable(self) -> bool:
        """False: ``scale`` times a zero covariance is zero."""
        return False

    def diagonal(self) -> PointPosterior:
        """Itself: a zero covariance is diagonal."""
        return self

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PointPosterior:
        """A copy on another device and/or floating dtype."""
        return PointPosterior(self.mean.to(device, dtype), self.layout)

    def save(self, path: _io.PathLike) -> None:
        """Write the posterior to ``path`` (safetensors, atomic)."""
        _io.save_file(path, _KIND, *self.to_state())

    @classmethod
    def load(
        cls, path: _io.PathLike, *, device: torch.device | str | None = None
    ) -> PointPosterior:
        """Read a posterior written by :meth:`save`.

        Raises:
            ValueError: if the file is damaged, foreign, or inconsistent with its layout.
        """
        return cls.from_state(*_io.load_file(path, _KIND, device), str(path))

    def to_state(self) -> State:
        """The tensors and string metadata :meth:`save` writes (also used by ``MultiSWAG``)."""
        return {"mean": self.mean}, {"layout": self.layout.to_json()}

    @classmethod
    def from_state(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str
    ) -> PointPosterior:
        """Rebuild from :meth:`to_state`'s output; ``where`` names the source in errors."""
        layout = ParamLayout.from_metadata(meta, "layout", where)
        _io.expect_tensors(tensors, ("mean",), where)
        floats = _io.FLOAT_DTYPES.values()
        return cls(_io.tensor_field(tensors, "mean", where, (layout.size,), floats), layout)
