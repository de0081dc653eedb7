"""SubspacePosterior: a posterior over z in a subspace, speaking the Posterior protocol."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from swag.core._checks import check_generator, check_positive, check_shape
from swag.core._posterior_base import Posterior, State
from swag.core._random import generator_for
from swag.core.layout import ParamLayout
from swag.family.subspace._basis import Subspace
from swag.family.subspace._ess import ESSResult
from swag.family.subspace._vi import VIResult
from swag.persistence import _io

KIND = "subspace_posterior"
SampleShape = int | Sequence[int] | torch.Size


@dataclass(frozen=True, eq=False)
class SubspacePosterior(Posterior):
    """p(θ) for θ = θ̂ + zB, with z from an ESS chain or a fitted Gaussian.

    Exactly one of ``chain`` (method ``"ess"``) or ``loc`` and ``scale_tril`` (method ``"vi"``)
    is set. Works with :func:`swag.predict`, :class:`~swag.MultiSWAG` sampling and the metrics
    like any posterior.

    Attributes:
        subspace: the origin θ̂ ``(P,)``, basis ``(k, P)`` and layout.
        chain: ``(S, k)`` ESS states, or None.
        loc: ``(k,)`` the Gaussian's mean, or None.
        scale_tril: ``(k, k)`` its Cholesky factor, or None.
        temperature: the T the posterior was inferred at (a record; not used to sample).
        prior_std: the σ_p it was inferred with (a record).
    """

    kind = KIND
    subspace: Subspace
    chain: Tensor | None = None
    loc: Tensor | None = None
    scale_tril: Tensor | None = None
    temperature: float = 1.0
    prior_std: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.subspace, Subspace):
            raise TypeError(
                f"subspace must be a swag.subspace.Subspace, got {type(self.subspace).__name__}"
            )
        for name in ("chain", "loc", "scale_tril"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Tensor) and value.is_floating_point()):
                raise TypeError(f"{name} must be a float tensor or None, got {value!r}")
        for name in ("temperature", "prior_std"):
            check_positive(getattr(self, name), name)
        k = self.subspace.dim
        if (self.chain is None) == (self.loc is None and self.scale_tril is None):
            raise ValueError("give either chain= (ESS) or loc= and scale_tril= (VI), not both")
        if self.chain is not None:
            if self.chain.dim() != 2 or self.chain.shape[1] != k or self.chain.shape[0] < 1:
                shape = tuple(self.chain.shape)
                raise ValueError(f"chain must have shape (S >= 1, {k}), got {shape}")
            if not bool(self.chain.isfinite().all()):
                raise ValueError("chain must be finite")
        else:
            if self.loc is None or self.scale_tril is None:
                raise ValueError("a Gaussian posterior needs both loc= and scale_tril=")
            if self.loc.shape != (k,) or self.scale_tril.shape != (k, k):
                raise ValueError(
                    f"loc must be ({k},) and scale_tril ({k}, {k}), got "
                    f"{tuple(self.loc.shape)} and {tuple(self.scale_tril.shape)}"
                )
            tril = self.scale_tril
            if not bool(tril.isfinite().all() and self.loc.isfinite().all()):
                raise ValueError("loc and scale_tril must be finite")
            if not bool((tril.diagonal() > 0).all()) or bool(tril.triu(1).ne(0).any()):
                raise ValueError("scale_tril must be lower triangular with a positive diagonal")
        for name, value in (("temperature", self.temperature), ("prior_std", self.prior_std)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")

    @classmethod
    def from_ess(
        cls, subspace: Subspace, result: ESSResult, *, temperature: float, prior_std: float
    ) -> SubspacePosterior:
        """From an ESS chain, recording the temperature and prior it was sampled with."""
        chain = result.samples.to(subspace.shift.device, subspace.shift.dtype)
        return cls(subspace, chain=chain, temperature=temperature, prior_std=prior_std)

    @classmethod
    def from_vi(
        cls, subspace: Subspace, result: VIResult, *, temperature: float, prior_std: float
    ) -> SubspacePosterior:
        """From :func:`~swag.subspace.fit_vi`'s Gaussian, recording its temperature and prior."""
        dev, dt = subspace.shift.device, subspace.shift.dtype
        return cls(
            subspace,
            loc=result.loc.to(dev, dt),
            scale_tril=result.scale_tril.to(dev, dt),
            temperature=temperature,
            prior_std=prior_std,
        )

    @property
    def method(self) -> Literal["ess", "vi"]:
        """How z was inferred: ``"ess"`` (a chain of states) or ``"vi"`` (a fitted Gaussian)."""
        return "ess" if self.chain is not None else "vi"

    @property
    def layout(self) -> ParamLayout:  # type: ignore[override]
        """Which model parameters the P entries of θ are: the subspace's layout."""
        return self.subspace.layout

    @property
    def mean(self) -> Tensor:  # type: ignore[override]
        """θ̂ + E[z]B ``(P,)``: the chain average, or the Gaussian's mean."""
        z = self.chain.mean(0) if self.chain is not None else self.loc
        assert z is not None
        return self.subspace.theta(z)

    def sample_z(
        self, sample_shape: SampleShape = (), *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws of z ``(*sample_shape, k)``.

        From a chain: its states in a random order (a permutation from ``generator``, repeated
        with fresh permutations when more draws than states are asked), so one call for S draws
        from a chain of S states uses each state exactly once; separate single draws (as
        :func:`swag.predict` takes them) are uniform over the states, with repeats. From a
        Gaussian: loc + L ε.

        Raises:
            TypeError, ValueError: for a ``sample_shape`` that ``SWAGPosterior.sample`` refuses
                (negative or non-integer sizes), with the same message.
        """
        shape = check_shape(sample_shape)
        check_generator(generator)
        num = math.prod(shape)
        k, dev = self.subspace.dim, self.subspace.shift.device
        generator = generator_for(dev, generator)
        if self.chain is not None:
            s = self.chain.shape[0]
            rounds = -(-num // s) if num else 0
            order = [torch.randperm(s, generator=generator, device=dev) for _ in range(rounds)]
            idx = torch.cat(order)[:num] if order else torch.zeros(0, dtype=torch.long)
            z = self.chain[idx.to(self.chain.device)]
        else:
            assert self.loc is not None and self.scale_tril is not None
            eps = torch.randn(num, k, generator=generator, device=dev, dtype=self.loc.dtype)
            z = self.loc + eps @ self.scale_tril.T
        return z.reshape(*shape, k)

    def _sample(
        self, shape: tuple[int, ...], scale: float | None, generator: torch.Generator | None
    ) -> Tensor:
        """Flat weights θ̂ + zB ``(*shape, P)``, z from :meth:`sample_z`.

        ``scale`` is checked and has no effect: the spread of z was inferred, and the
        temperature set at inference is the knob that widens or narrows it.
        """
        return self.subspace.theta(self.sample_z(shape, generator=generator))

    @property
    def scalable(self) -> bool:
        """False: the spread of z was inferred; ``scale`` does not change the draws."""
        return False

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SubspacePosterior:
        """A copy on another device and/or floating dtype."""
        sub = self.subspace
        moved = Subspace(
            sub.shift.to(device, dtype), sub.basis.to(device, dtype), sub.layout, sub.kind
        )

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, dtype)

        return SubspacePosterior(
            moved,
            chain=move(self.chain),
            loc=move(self.loc),
            scale_tril=move(self.scale_tril),
            temperature=self.temperature,
            prior_std=self.prior_std,
        )

    def save(self, path: _io.PathLike) -> None:
        """Write the posterior to ``path`` (safetensors, atomic)."""
        _io.save_file(path, KIND, *self.to_state())

    def to_state(self) -> State:
        """The tensors and string metadata :meth:`save` writes."""
        sub = self.subspace
        tensors = {"shift": sub.shift, "basis": sub.basis}
        if self.chain is not None:
            tensors["chain"] = self.chain
        else:
            assert self.loc is not None and self.scale_tril is not None
            tensors |= {"loc": self.loc, "scale_tril": self.scale_tril}
        meta = {
            "layout": sub.layout.to_json(),
            "subspace_kind": sub.kind,
            "method": self.method,
            "temperature": repr(self.temperature),
            "prior_std": repr(self.prior_std),
        }
        return tensors, meta

    @classmethod
    def load(
        cls, path: _io.PathLike, *, device: torch.device | str | None = None
    ) -> SubspacePosterior:
        """Read a posterior written by :meth:`save`.

        Strict: every field and tensor is checked (names, shapes, one float dtype, finite
        values, the kind of subspace, canonical numbers) before anything is built.

        Raises:
            ValueError: if the file is damaged, foreign, or its tensors do not fit its layout;
                the message names the file.
        """
        return cls.from_state(*_io.load_file(path, KIND, device), str(path))

    @classmethod
    def from_state(
        cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str
    ) -> SubspacePosterior:
        """Rebuild from :meth:`to_state`'s output; ``where`` names the source in errors."""
        path = where
        layout = ParamLayout.from_metadata(meta, "layout", path)
        kind = _io.require(meta, "subspace_kind", path)
        if kind not in SUBSPACE_KINDS:
            raise ValueError(
                f"{path}: metadata field 'subspace_kind' {kind!r} is not one of {SUBSPACE_KINDS}"
            )
        method = _io.require(meta, "method", path)
        if method not in ("ess", "vi"):
            raise ValueError(f"{path}: unknown method {method!r} (expected 'ess' or 'vi')")
        temperature = _float_field(meta, "temperature", path)
        prior_std = _float_field(meta, "prior_std", path)
        names = ("shift", "basis") + (("chain",) if method == "ess" else ("loc", "scale_tril"))
        _io.expect_tensors(tensors, names, path)
        shift = _io.tensor_field(tensors, "shift", path, (layout.size,), _io.FLOAT_DTYPES.values())
        same = (shift.dtype,)
        k = _rows(tensors, "basis")
        basis = _io.tensor_field(tensors, "basis", path, (k, layout.size), same)
        try:
            sub = Subspace(shift, basis, layout, kind)
            if method == "ess":
                chain = _io.tensor_field(tensors, "chain", path, (_rows(tensors, "chain"), k), same)
                return cls(sub, chain=chain, temperature=temperature, prior_std=prior_std)
            loc = _io.tensor_field(tensors, "loc", path, (k,), same)
            tril = _io.tensor_field(tensors, "scale_tril", path, (k, k), same)
            return cls(sub, loc=loc, scale_tril=tril, temperature=temperature, prior_std=prior_std)
        except ValueError as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"{path}: {e}") from e


SUBSPACE_KINDS = ("pca", "random", "custom")


def _rows(tensors: dict[str, Tensor], name: str) -> int:
    """The leading size of a 2-D tensor (0 for anything else, which its shape check refuses)."""
    t = tensors.get(name)
    return t.shape[0] if t is not None and t.dim() == 2 else 0


def _float_field(meta: dict[str, str], key: str, path: _io.PathLike) -> float:
    """``meta[key]``: a finite float > 0 written as ``repr`` writes it (nothing else parses)."""
    text = _io.require(meta, key, path)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0 and repr(value) == text):
        raise ValueError(
            f"{path}: metadata field {key!r} {text!r} is not a finite float > 0 as repr() writes it"
        )
    return value
