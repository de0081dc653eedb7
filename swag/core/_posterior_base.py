"""The contract every posterior kind implements: the abstract :class:`Posterior`.

A posterior is a distribution over the P covered parameters of a model (its ``layout``).
Consumers (:func:`swag.predict`, :func:`swag.fit_scale`, :class:`~swag.MultiSWAG`, the
landscape, the callbacks, :func:`swag.save`) rely on this class alone:

- ``sample(sample_shape=(), *, scale=None, generator=None)`` -> ``(*sample_shape, P)``; the
  arguments common to every kind are checked here, once, and the result's shape too;
- ``apply_(model, theta)`` / ``to_model(model, theta)`` write a flat vector into a model;
- ``to(device=None, dtype=None)`` converts;
- ``kind``, ``to_state()`` and ``from_state(...)`` are the saved state.

Options of one kind stay on that kind (SWAG's diagonal view is ``posterior.diagonal()``).
Kinds with a density also derive from :class:`Density`.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from swag.core._checks import SampleShape, check_bool, check_generator, check_scale, check_shape
from swag.core._params import working_copy
from swag.core._random import generator_for
from swag.core.layout import ParamLayout

__all__ = ["Density", "Posterior", "SampleShape", "State"]

State = tuple[dict[str, Tensor], dict[str, str]]
"""What a posterior saves: named tensors and string metadata."""

_P = TypeVar("_P", bound="Posterior")


class Posterior(abc.ABC):
    """Abstract base of every posterior kind (SWAG, point, MultiSWAG, subspace, sharded).

    Subclasses set ``kind`` (the name written in files), hold ``layout`` and ``mean`` (the
    point estimate ``(P,)``, e.g. the SWA weights) and implement :meth:`_sample`, :meth:`to`,
    :meth:`to_state` and :meth:`from_state`.
    """

    kind: ClassVar[str]
    layout: ParamLayout
    mean: Tensor
    kinds: ClassVar[dict[str, type[Posterior]]] = {}
    """Every concrete kind by its ``kind`` name (what :func:`swag.load` dispatches on)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            Posterior.kinds[kind] = cls

    @property
    def scalable(self) -> bool:
        """Whether ``sample``'s ``scale`` changes the draws (False: point, subspace)."""
        return True

    @staticmethod
    def kind_class(kind: str) -> type[Posterior] | None:
        """The class whose files say ``kind``, or None.

        Every kind registers itself when its module is imported; ``import swag`` imports them
        all, the subspace posterior included.
        """
        return Posterior.kinds.get(kind)

    def sample(
        self,
        sample_shape: SampleShape = (),
        *,
        scale: float | None = None,
        generator: torch.Generator | None = None,
        diagonal: bool | None = None,
    ) -> Tensor:
        """Flat parameter vectors ``(*sample_shape, P)`` in ``layout`` order.

        Args:
            sample_shape: leading shape: an int or a sequence of ints >= 0.
            scale: the covariance multiplier, finite and >= 0; None is the kind's default
                (0.5 for SWAG, 1.0 for its diagonal view). Kinds without a covariance to
                scale (point, subspace) check it and draw the same either way.
            generator: a ``torch.Generator`` on any device, or None for the global RNG (see
                ``docs/concepts.md``, "Devices and generators").
            diagonal: deprecated; use ``posterior.diagonal().sample(...)``.

        Raises:
            TypeError: for arguments of the wrong type.
            ValueError: for a NaN, infinite or negative ``scale`` or a negative size.
        """
        if diagonal is not None:
            check_bool(diagonal, "diagonal")
            warnings.warn(
                f"{type(self).__name__}.sample(diagonal=...) is deprecated; "
                "sample from posterior.diagonal() instead",
                DeprecationWarning,
                stacklevel=2,
            )
            if diagonal:
                return self.diagonal().sample(sample_shape, scale=scale, generator=generator)
        shape, value, gen = self._sample_args(sample_shape, scale, generator)
        return self._checked(self._sample(shape, value, gen), shape)

    def _sample_args(
        self, sample_shape: object, scale: object, generator: object
    ) -> tuple[tuple[int, ...], float | None, torch.Generator | None]:
        """The checks common to every kind: shape, scale (None kept) and generator."""
        shape = check_shape(sample_shape)
        value = None if scale is None else check_scale(scale, False)
        check_generator(generator)
        assert generator is None or isinstance(generator, torch.Generator)
        return shape, value, generator_for(self.mean.device, generator)

    def _checked(self, out: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``out``, checked to be ``(*shape, P)`` (a kind returning anything else is a bug)."""
        if out.shape != (*shape, self.layout.size):
            raise RuntimeError(
                f"{type(self).__name__}._sample returned shape {tuple(out.shape)}, "
                f"expected {(*shape, self.layout.size)}"
            )
        return out

    @abc.abstractmethod
    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        """``(*shape, P)`` draws; arguments already checked, ``generator`` on this device."""

    def diagonal(self: _P) -> _P:
        """The diagonal-covariance view of this posterior (SWAG-Diag for SWAG).

        Raises:
            TypeError: for kinds whose covariance has no diagonal view.
        """
        raise TypeError(
            f"a {type(self).__name__} has no diagonal view (only SWAGPosterior, PointPosterior "
            "and mixtures of them do); sample it as it is"
        )

    def apply_(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """Write ``theta`` ``(P,)`` (default: the mean) into ``model``'s covered parameters."""
        self.layout.scatter(self.mean if theta is None else theta, model)
        return model

    def to_model(self, model: nn.Module, theta: Tensor | None = None) -> nn.Module:
        """A deep copy of ``model`` holding ``theta`` (default: the mean, e.g. the SWA model)."""
        return self.apply_(working_copy(model), theta)

    @abc.abstractmethod
    def to(
        self: _P, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> _P:
        """A copy on another device and/or floating dtype."""

    @abc.abstractmethod
    def to_state(self) -> State:
        """The tensors and string metadata that :func:`swag.save` writes."""

    @classmethod
    @abc.abstractmethod
    def from_state(
        cls: type[_P], tensors: dict[str, Tensor], meta: dict[str, str], where: str
    ) -> _P:
        """Rebuild from :meth:`to_state`'s output, validated; ``where`` names the source."""


class Density(abc.ABC):
    """Mixin for posterior kinds with a density: ``log_prob(theta)`` in nats."""

    @abc.abstractmethod
    def log_prob(self, theta: Tensor, *, scale: float | None = None) -> Tensor:
        """Log density of ``theta`` ``(..., P)``; shape ``(...)``."""
