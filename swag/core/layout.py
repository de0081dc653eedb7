"""Which model parameters a flat vector covers: :class:`ParamLayout` and its selector.

Everything in swag works on flat vectors of length P (the number of covered scalars). A
:class:`ParamLayout` says which parameters are covered, in which order, with which shapes and
dtypes; it gathers them into a flat buffer and scatters a flat vector back into a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from swag.core._initdoc import document_init
from swag.core._params import BoundParams, unwrap
from swag.persistence import _io

__all__ = ["ParamLayout", "ParamSelector"]

ParamSelector = str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None
"""Which parameters to cover: ``None`` (every floating-point parameter with ``requires_grad``),
a name prefix or a sequence of them (``"fc"`` covers ``fc.weight`` and ``fc.bias``), or a
predicate ``(name, parameter) -> bool``."""


def _named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Every name of every parameter, wrapper prefixes removed; a tied one comes once per name."""
    inner, _ = unwrap(model)
    yield from inner.named_parameters(remove_duplicate=False)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _heads(name: str) -> set[str]:
    """The prefixes that select ``name``: ``"a.b.c"`` → ``{"a", "a.b", "a.b.c"}``."""
    parts = name.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


@document_init
@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and dtypes of the covered parameters, in flat-vector order.

    Parameter ``i`` occupies ``flat[offsets[i] : offsets[i] + numels[i]]``. Build one with
    :meth:`from_model` rather than by hand.

    Attributes:
        names: the parameters' names in the model, in flat-vector order (wrapper prefixes
            such as ``module.`` removed).
        shapes: each parameter's shape, e.g. ``(out_features, in_features)``.
        dtypes: each parameter's floating dtype.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def from_model(cls, model: nn.Module, params: ParamSelector = None) -> ParamLayout:
        """Select the covered parameters of ``model`` (wrapper prefixes removed: :func:`unwrap`).

        A tied parameter (one tensor under several names) is selected when any of its names
        is, and recorded once, under its first name in ``named_parameters()``.

        Raises:
            ValueError: if the selection is empty, one of its names matches nothing, or it
                covers a non-floating-point parameter.
            TypeError: if ``params`` is neither a prefix, a sequence of them, nor callable.
        """
        named = list(_named_parameters(model))
        # A tied parameter has several names: it is selected when any of them is, covered
        # once, and recorded under its first name (the one named_parameters() gives).
        groups: dict[int, tuple[list[str], nn.Parameter]] = {}
        for n, p in named:
            groups.setdefault(id(p), ([], p))[0].append(n)
        if params is None:
            chosen = [(ns[0], p) for ns, p in groups.values() if p.requires_grad]
            chosen = [(n, p) for n, p in chosen if p.is_floating_point()]
        elif callable(params):
            chosen = [(ns[0], p) for ns, p in groups.values() if any(params(n, p) for n in ns)]
        else:
            if not isinstance(params, str) and not all(isinstance(q, str) for q in params):
                raise TypeError(
                    "params must be a name prefix, a sequence of them or a predicate "
                    f"(name, parameter) -> bool, got {params!r}"
                )
            wanted = {params} if isinstance(params, str) else set(params)
            chosen = [
                (ns[0], p) for ns, p in groups.values() if any(_heads(n) & wanted for n in ns)
            ]
            heads = set().union(*(_heads(n) for n, _ in named))
            unused = sorted(wanted - heads)
            if chosen and unused:
                raise ValueError(
                    f"params entries {unused} match no parameter of the model; check the "
                    f"names (available include: {', '.join(n for n, _ in named[:20])})"
                )
        if not chosen:
            available = ", ".join(n for n, _ in named[:20]) or "(the model has no parameters)"
            raise ValueError(
                f"params={params!r} selected no parameters; available names include: {available}"
            )
        bad = [n for n, p in chosen if not p.is_floating_point()]
        if bad:
            raise ValueError(
                f"parameters {bad} are not floating point and cannot be averaged; "
                "exclude them with params="
            )
        return cls(
            names=tuple(n for n, _ in chosen),
            shapes=tuple(tuple(p.shape) for _, p in chosen),
            dtypes=tuple(p.dtype for _, p in chosen),
        )

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for n in self.numels:
            out.append(total)
            total += n
        return tuple(out)

    @property
    def size(self) -> int:
        """P, the number of covered scalars."""
        return sum(self.numels)

    def resolve(self, model: nn.Module) -> list[Tensor]:
        """The covered parameters of ``model`` (detached), checked against this layout.

        Raises:
            ValueError: naming each missing parameter or shape/dtype mismatch.
        """
        found = dict(_named_parameters(model))
        problems: list[str] = []
        out: list[Tensor] = []
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            p = found.get(name)
            if p is None:
                problems.append(f"{name}: missing from the model")
            elif tuple(p.shape) != shape:
                problems.append(f"{name}: shape {tuple(p.shape)}, expected {shape}")
            elif p.dtype != dtype:
                problems.append(f"{name}: dtype {p.dtype}, expected {dtype}")
            else:
                out.append(p.detach())
        if problems:
            hint = _prefix_hint(self.names, found) if len(problems) == len(self.names) else None
            raise ValueError(
                "the model's covered parameters do not match the layout recorded at creation: "
                + "; ".join(problems[:10])
                + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
                + (f". {hint}" if hint else "")
                + ". Pass the same architecture, or build a new Collector for this model."
            )
        return out

    def bind(self, model: nn.Module) -> BoundParams:
        """The covered parameters of ``model``, checked now and cheaply re-checked on each use.

        Raises:
            ValueError: as :meth:`resolve`.
        """
        return BoundParams(self.names, self.resolve(model), model)

    @staticmethod
    def gather(pieces: Sequence[Tensor], out: Tensor) -> Tensor:
        """Concatenate the 1-D ``pieces`` into ``out``, casting to its dtype and device."""
        if all(t.device == out.device for t in pieces):
            return torch.cat(list(pieces), out=out)
        pos = 0
        for t in pieces:
            out[pos : pos + t.numel()].copy_(t, non_blocking=True)
            pos += t.numel()
        return out

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat ``(..., P)`` tensor, one ``(..., *shape)`` per covered parameter."""
        lead = flat.shape[:-1]
        return [
            flat[..., o : o + n].view(torch.Size((*lead, *s)))
            for o, n, s in zip(self.offsets, self.numels, self.shapes, strict=True)
        ]

    @torch.no_grad()
    def scatter(self, theta: Tensor, model: nn.Module) -> None:
        """Copy the flat ``theta`` of shape ``(P,)`` into ``model``'s covered parameters."""
        if theta.shape != (self.size,):
            raise ValueError(f"theta must have shape ({self.size},), got {tuple(theta.shape)}")
        torch._foreach_copy_(self.resolve(model), self.split(theta))

    def to_json(self) -> str:
        return json.dumps(
            [
                [n, list(s), _dtype_name(d)]
                for n, s, d in zip(self.names, self.shapes, self.dtypes, strict=True)
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> ParamLayout:
        rows = json.loads(text)
        return cls(
            names=tuple(str(r[0]) for r in rows),
            shapes=tuple(tuple(int(x) for x in r[1]) for r in rows),
            dtypes=tuple(getattr(torch, str(r[2])) for r in rows),
        )

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], key: str, where: _io.PathLike) -> ParamLayout:
        """The layout a file's metadata holds at ``key``, checked row by row.

        Raises:
            ValueError: naming ``where`` and the row, if it is not a layout swag writes.
        """
        return cls(*_io.layout_rows(meta, key, where))

    def strip_prefix(self, prefix: str) -> ParamLayout:
        """This layout with ``prefix`` removed from every name (e.g. ``"net."``).

        For a posterior taken from a module that wraps the one it is applied to, as
        ``dataclasses.replace(posterior, layout=posterior.layout.strip_prefix("net."))``.

        Raises:
            ValueError: naming a parameter whose name does not start with ``prefix``.
        """
        if not isinstance(prefix, str) or not prefix:
            raise TypeError(f"prefix must be a non-empty str, got {prefix!r}")
        bare = [n for n in self.names if not n.startswith(prefix)]
        if bare:
            raise ValueError(f"prefix {prefix!r} does not begin the parameter name {bare[0]!r}")
        names = tuple(n[len(prefix) :] for n in self.names)
        return ParamLayout(names=names, shapes=self.shapes, dtypes=self.dtypes)

    def mismatch(
        self, other: ParamLayout, *, this: str = "here", that: str = "saved"
    ) -> str | None:
        """How ``other`` differs from this layout, in words; ``None`` if they are equal.

        ``this`` and ``that`` name the two sides in the message (e.g. "here" and "saved").
        """
        if self == other:
            return None
        mine = dict(zip(self.names, self._rows(), strict=True))
        theirs = dict(zip(other.names, other._rows(), strict=True))
        diffs = [f"{n}: not {that}" for n in mine if n not in theirs]
        diffs += [f"{n}: {that} but not {this}" for n in theirs if n not in mine]
        diffs += [
            f"{n}: {that} {theirs[n]}, {this} {mine[n]}"
            for n in mine
            if theirs.get(n, mine[n]) != mine[n]
        ]
        if not diffs:
            diffs = ["same parameters in a different order"]
        more = f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""
        return "; ".join(diffs[:10]) + more

    def _rows(self) -> list[str]:
        return [
            f"shape {s} {_dtype_name(d)}" for s, d in zip(self.shapes, self.dtypes, strict=True)
        ]


def _prefix_hint(names: Sequence[str], found: Mapping[str, Tensor]) -> str | None:
    """When every name differs from the model's by one prefix, say which and how to map it."""
    first = names[0]
    for other in found:
        if first.endswith(other) and first != other:
            prefix = first[: -len(other)]
            ok = prefix.endswith(".")  # a whole module name
            if ok and all(n.startswith(prefix) and n[len(prefix) :] in found for n in names):
                return (
                    f"Every name carries the prefix {prefix!r}, which the model's lack: the "
                    "posterior was taken from a module that wraps this one (e.g. a "
                    "LightningModule's attribute). Strip it: "
                    f"SWAGCallback.posterior(strip_prefix={prefix!r}), or "
                    f"dataclasses.replace(posterior, layout=posterior.layout.strip_prefix("
                    f"{prefix!r}))"
                )
        if other.endswith(first) and first != other:
            prefix = other[: -len(first)]
            if prefix.endswith(".") and all(prefix + n in found for n in names):
                return (
                    f"Every name of the model carries the prefix {prefix!r}, which the "
                    "posterior's lack: pass the inner module the posterior was taken from "
                    f"(the model's submodule {prefix.rstrip('.')!r})"
                )
    return None
