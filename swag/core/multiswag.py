"""MultiSWAG: an equal-weight mixture of posteriors. Of point posteriors, a deep ensemble."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from swag.core._checks import check_count, check_generator
from swag.core._initdoc import document_init
from swag.core._posterior_base import Posterior, State
from swag.core._random import generator_for
from swag.persistence import _io

__all__ = ["MultiSWAG", "iter_samples"]

_KIND = "multiswag"
_MAX_DEPTH = 32  # nested mixtures read (deeper would exhaust Python's recursion limit)


@document_init
class MultiSWAG(Posterior):
    """An equal-weight mixture of posteriors over the same parameters.

    p(θ) = (1/M) Σ_m p_m(θ). Components may be :class:`~swag.SWAGPosterior` (MultiSWAG proper),
    :class:`~swag.PointPosterior` (a deep ensemble: ``MultiSWAG([PointPosterior, ...])``), a mix
    of both, or nested mixtures (each level weighs its own components equally).

    Sampling is stratified: ``S`` samples give every component ``S // M`` of them, and the
    ``S % M`` left over go to distinct components picked uniformly at random (from
    ``generator``; see :meth:`allocation`), returned in component order. This removes most of
    the allocation noise of drawing components at random, while every component is equally
    likely to be drawn: a single draw (``sample()``) comes from a uniformly random component,
    so a loop over ``sample()`` averages the whole mixture. Choose S a multiple of M for
    exactly equal weights in one average (no random choice is then made).

    Args:
        components: the posteriors, all with the same layout, device and dtype.

    Attributes:
        components: the posteriors, in order.
        mean: ``(P,)``, the average of the components' means (computed in float64).
        layout: the shared parameter layout.

    Raises:
        ValueError: if there are no components, or one differs from the first in layout,
            device or dtype (the message names it).

    Example:
        >>> from swag import PointPosterior
        >>> members = [PointPosterior.from_model(torch.nn.Linear(3, 2)) for _ in range(3)]
        >>> ensemble = MultiSWAG(members)
        >>> ensemble.allocation(30)
        [10, 10, 10]
    """

    kind = _KIND

    def __init__(self, components: Sequence[Posterior]) -> None:
        comps = tuple(components)
        if not comps:
            raise ValueError("MultiSWAG needs at least one component posterior, got none")
        for i, c in enumerate(comps):
            if not isinstance(c, Posterior):
                raise TypeError(f"component {i} must be a swag.Posterior, got {type(c).__name__}")
            if c.kind == "sharded_posterior" or c.mean.shape != (c.layout.size,):
                raise ValueError(
                    f"component {i} is one rank's shard ({type(c).__name__}); pass its "
                    ".full() posterior instead"
                )
        first = comps[0].mean
        for i, c in enumerate(comps[1:], start=1):
            if c.layout != comps[0].layout:
                raise ValueError(
                    f"component {i} covers different parameters than component 0: "
                    + str(comps[0].layout.mismatch(c.layout, this="component 0", that="it"))
                    + ". Build every component from the same architecture with the same "
                    "params= selection"
                )
            if (c.mean.device, c.mean.dtype) != (first.device, first.dtype):
                raise ValueError(
                    f"component {i} is {c.mean.dtype} on {c.mean.device}, component 0 is "
                    f"{first.dtype} on {first.device}; convert them with .to(device, dtype)"
                )
        total = torch.zeros_like(first, dtype=torch.float64)
        for c in comps:
            total += c.mean
        self.components = comps
        self.layout = comps[0].layout
        self.mean = (total / len(comps)).to(first.dtype)

    def __len__(self) -> int:
        return len(self.components)

    def allocation(
        self, num_samples: int, *, generator: torch.Generator | None = None
    ) -> list[int]:
        """How many of ``num_samples`` draws each component gets, in component order.

        ``num_samples // M`` each, and one more for each of ``num_samples % M`` distinct
        components chosen uniformly at random (one ``torch.randperm(M)`` from ``generator``,
        or the global RNG without one): 30 over 3 is ``[10, 10, 10]``, 31 is one of
        ``[11, 10, 10]``, ``[10, 11, 10]``, ``[10, 10, 11]``, each with probability 1/3. Every
        component's expected count is exactly ``num_samples / M``. When M divides
        ``num_samples`` nothing random is drawn and the generator is not advanced.
        """
        check_count(num_samples, "num_samples", minimum=0)
        check_generator(generator)
        m = len(self.components)
        base, extra = divmod(num_samples, m)
        counts = [base] * m
        if extra:
            device = generator.device if generator is not None else "cpu"
            for i in torch.randperm(m, generator=generator, device=device)[:extra].tolist():
                counts[i] += 1
        return counts

    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        """Stratified draws from the mixture, ``(*shape, P)``.

        The ``S = prod(shape)`` draws are split by :meth:`allocation` (which draws the
        components of the ``S % M`` remainder from ``generator`` first); component ``m``
        contributes ``component.sample((n_m,), scale=scale, generator=generator)``,
        concatenated in component order. All components share ``generator``, consumed in that
        order; ``scale=None`` is each component's own default.
        """
        counts = self.allocation(math.prod(shape), generator=generator)
        parts = [
            c.sample((n,), scale=scale, generator=generator)
            for c, n in zip(self.components, counts, strict=True)
            if n
        ]
        flat = torch.cat(parts) if parts else self.mean.new_empty(0, self.layout.size)
        return flat.view(*shape, self.layout.size)

    @property
    def scalable(self) -> bool:
        """Whether ``scale`` changes some member's draws."""
        return any(c.scalable for c in self.components)

    def diagonal(self) -> MultiSWAG:
        """The mixture of the components' diagonal views (SWAG-Diag members).

        Raises:
            TypeError: if a component has no diagonal view.
        """
        return MultiSWAG([c.diagonal() for c in self.components])

    def swa(self) -> MultiSWAG:
        """The mixture of the members' SWA means (MultiSWA): each member's ``swa()``.

        A point member (a :class:`~swag.PointPosterior`) stays as it is.

        Raises:
            TypeError: if a member is neither a point nor has an ``swa()`` view.
        """
        members = []
        for i, c in enumerate(self.components):
            view = getattr(c, "swa", None)
            if view is None and c.scalable:
                raise TypeError(f"component {i} ({type(c).__name__}) has no swa() view of its mean")
            members.append(c if view is None else view())
        return MultiSWAG(members)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MultiSWAG:
        """A copy with every component on another device and/or floating dtype."""
        return MultiSWAG([c.to(device, dtype) for c in self.components])

    def save(self, path: _io.PathLike) -> None:
        """Write every component to one file at ``path`` (safetensors, atomic).

        Component ``i``'s tensors and metadata are stored under the prefix ``c{i}.``; the
        metadata field ``components`` lists their kinds, in order.

        Raises:
            TypeError: if a component's kind cannot be saved (a ShardedPosterior).
        """
        tensors, meta = self.to_state()
        seen: set[int] = set()
        for key, t in tensors.items():  # safetensors refuses tensors that share memory
            ptr = t.untyped_storage().data_ptr()
            tensors[key] = t.clone() if ptr in seen else t
            seen.add(ptr)
        _io.save_file(path, _KIND, tensors, meta)

    @classmethod
    def load(cls, path: _io.PathLike, *, device: torch.device | str | None = None) -> MultiSWAG:
        """Read a mixture written by :meth:`save`.

        Raises:
            ValueError: if the file is damaged or foreign, a component is of an unknown kind or
                inconsistent with its layout, or the components' layouts differ.
        """
        tensors, meta = _io.load_file(path, _KIND, device)
        depth = max(_depth(key) for key in meta)
        if depth > _MAX_DEPTH:
            raise ValueError(f"{path} nests mixtures {depth} deep; at most {_MAX_DEPTH} are read")
        return cls.from_state(tensors, meta, str(path))

    def to_state(self) -> State:
        """Every component's state under the prefix ``c{i}.``; ``components`` lists kinds."""
        tensors: dict[str, Tensor] = {}
        meta: dict[str, str] = {}
        kinds = []
        for i, component in enumerate(self.components):
            sub_tensors, sub_meta = component.to_state()
            kinds.append(component.kind)
            tensors.update({f"c{i}.{k}": v for k, v in sub_tensors.items()})
            meta.update({f"c{i}.{k}": v for k, v in sub_meta.items()})
        meta["components"] = json.dumps(kinds)
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str) -> MultiSWAG:
        """Rebuild from :meth:`to_state`'s output; ``where`` names the source in errors."""
        kinds = _io.json_field(meta, "components", where)
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
            raise ValueError(
                f"{where}: metadata field 'components' must be a non-empty list of kinds, got "
                f"{meta['components'][:80]!r}"
            )
        prefixes = [f"c{i}." for i in range(len(kinds))]
        _io.expect_tensors(
            tensors, [k for k in tensors if k.startswith(tuple(prefixes))], f"{where} (mixture)"
        )
        components = []
        for i, (kind, prefix) in enumerate(zip(kinds, prefixes, strict=True)):
            decode = Posterior.kind_class(kind)
            if decode is None:
                raise ValueError(
                    f"{where}: component {i} is a {kind!r}; known kinds: {sorted(Posterior.kinds)}"
                )
            components.append(
                decode.from_state(
                    {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)},
                    {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)},
                    f"{where} (component {i})",
                )
            )
        try:
            return cls(components)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def iter_samples(
    posterior: Posterior,
    num_samples: int,
    *,
    scale: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Draw ``num_samples`` flat vectors ``(P,)`` lazily, one at a time (memory O(P)).

    A :class:`MultiSWAG` yields its components' draws in component order, ``n_m`` from component
    ``m`` as :meth:`MultiSWAG.allocation` says (recursively for nested mixtures); any other
    posterior yields ``posterior.sample((), scale=scale, generator=generator)``
    ``num_samples`` times. Single draws consume a generator differently from one batched
    ``sample((S,))``, so the values differ from it for the same seed. ``scale=None`` is each
    posterior's own default.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    generator = generator_for(posterior.mean.device, generator)
    if isinstance(posterior, MultiSWAG):
        counts = posterior.allocation(num_samples, generator=generator)
        for c, n in zip(posterior.components, counts, strict=True):
            yield from iter_samples(c, n, scale=scale, generator=generator)
    else:
        for _ in range(num_samples):
            yield posterior.sample((), scale=scale, generator=generator)


def _depth(key: str) -> int:
    """How many component prefixes (``c0.``, ``c12.``) a metadata key starts with."""
    parts = key.split(".")[:-1]
    return next((i for i, p in enumerate(parts) if not re.fullmatch("c[0-9]+", p)), len(parts))
