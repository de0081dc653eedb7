"""SAM and ASAM: sharpness-aware minimisation around any torch optimizer.

SAM (Foret et al., 2021) minimises ``max_{‖ε‖₂ ≤ ρ} L(θ + ε)``. Each step takes two
gradients: ``g = ∇L(θ)``, the ascent ``ε̂ = ρ g / ‖g‖₂`` (one norm over all parameters), then
``g' = ∇L(θ + ε̂)``; the weights go back to θ and the base optimizer steps with ``g'``.
ASAM (Kwon et al., 2021) makes the neighbourhood scale-invariant with ``T = |θ| + η``
(element-wise): ``ε̂ = ρ T² g / ‖T g‖₂``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.optim import Optimizer

from swag.core._checks import check_bool, check_callable, check_state_dict

__all__ = ["SAM", "frozen_bn"]

_TINY = 1e-12  # keeps ε̂ = 0 (not NaN) when the gradient is exactly zero


def _real(name: str, value: object, *, positive: bool, hint: str) -> float:
    """``value`` as a finite float, > 0 (``positive``) or >= 0; else a named error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    number = float(value)
    if not (math.isfinite(number) and (number > 0 if positive else number >= 0)):
        raise ValueError(f"{name} must be finite and {'>' if positive else '>='} 0, {hint}")
    return number


@contextlib.contextmanager
def frozen_bn(model: nn.Module) -> Iterator[None]:
    """Run forwards that must not move BatchNorm's running statistics.

    Covers every ``torch.nn`` normalisation layer with running statistics: BatchNorm (also
    lazy and synchronised) and InstanceNorm with ``track_running_stats=True``.
    Inside, these layers still normalise with the batch's statistics (training mode is
    untouched, so gradients are those of a training forward), but on exit their
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are restored exactly. SAM's
    second forward, at the perturbed weights θ + ε̂, runs under it: the statistics should
    describe θ, the weights kept (the SAM authors' implementation keeps the state of the first
    forward and drops that of the second).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    saved = [
        (buf, buf.clone())
        for m in model.modules()
        if isinstance(m, _NormBase)
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in saved:
                buf.copy_(old)


class SAM(Optimizer):
    """Sharpness-aware minimisation wrapping ``base``, any torch optimizer.

    SAM shares ``base``'s parameter groups (each also gets ``rho``, ``adaptive`` and ``eta``
    entries), so a learning-rate scheduler works on either (also with the two steps called by
    hand), and ``state_dict()`` is the base optimizer's. Use it with a closure that computes
    the loss and calls ``backward()``::

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)  # two forward/backward passes

    or by hand: ``loss.backward(); opt.first_step(); loss_fn(model(x), y).backward();
    opt.second_step()`` (with ``with frozen_bn(model):`` around the second forward).

    Memory: one copy of the parameters that have gradients (θ, held between the two passes).

    Weight decay: ε̂ is computed from the gradient of the loss alone; the base optimizer's
    weight decay is applied in the descent step, at θ. This is the paper's objective
    ``min_θ max_ε L(θ + ε) + λ‖θ‖²``, with the regulariser outside the maximisation, and it
    keeps ``SAM(SGD(weight_decay=λ))`` and ``SAM(AdamW(weight_decay=λ))`` meaning what their
    base optimizers mean. (A penalty added to the loss inside the closure is, of course, part
    of the gradient that ε̂ follows.)

    Gradient clipping: clipping by the global norm inside the closure leaves ε̂ unchanged
    (only g's direction enters it) and clips g'. ``max_grad_norm`` clips g' alone, just before
    the base step.

    Args:
        base: the optimizer that takes the descent step (SGD, Adam, ...).
        rho: ρ > 0, the neighbourhood radius in parameter units (0.05 in the SAM paper;
            ASAM uses larger values, e.g. 0.5 to 2).
        adaptive: ASAM's scale-invariant neighbourhood.
        eta: η in ASAM's ``T = |θ| + η`` (0.01 in the ASAM paper).
        max_grad_norm: clip the descent gradient g' to this global norm (default: no clip).
        model: the network; when given, :meth:`step` runs the second forward under
            :func:`frozen_bn` so BatchNorm statistics are only updated at θ.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
        >>> x, y = torch.ones(4, 2), torch.zeros(4, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        base: Optimizer,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        max_grad_norm: float | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        if isinstance(base, SAM):
            raise TypeError("base is already a SAM optimizer; wrap the plain optimizer once")
        if not base.param_groups or not any(g["params"] for g in base.param_groups):
            raise ValueError(
                "base has no parameters; build it from the model's parameters, e.g. "
                "SGD(model.parameters(), lr=0.1)"
            )
        rho = _real(
            "rho",
            rho,
            positive=True,
            hint=f"got {rho} (0.05 in the SAM paper; rho=0 is the base optimizer at twice the "
            "cost: use base itself)",
        )
        eta = _real("eta", eta, positive=False, hint=f"got {eta} (0.01 in the ASAM paper)")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be True (ASAM) or False (SAM), got {adaptive!r}")
        if max_grad_norm is not None:
            max_grad_norm = _real(
                "max_grad_norm",
                max_grad_norm,
                positive=True,
                hint=f"got {max_grad_norm} (or None for no clipping)",
            )
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be the nn.Module being trained (or None), got {type(model).__name__}"
            )
        super().__init__(base.param_groups, {"rho": rho, "adaptive": adaptive, "eta": eta})
        self.base = base
        self.param_groups = base.param_groups  # one list of groups: schedulers see one rate
        self.max_grad_norm = max_grad_norm
        self.model = model
        self._perturbed: list[Tensor] = []  # moved by first_step, restored by second_step

    @torch.no_grad()
    def first_step(self) -> None:
        """Ascent: θ ← θ + ε̂ from the current gradients, which are then cleared.

        Parameters without a gradient are not moved. Sparse gradients are made dense here
        (ε̂ is dense for ASAM anyway); the base optimizer still gets g' as computed.

        Raises:
            RuntimeError: if no parameter has a gradient, or the previous ``first_step()``
                was not followed by ``second_step()`` (θ would be lost).
        """
        if self._perturbed:
            raise RuntimeError(
                "first_step() called twice: the weights are still at θ + ε̂ from the last one, "
                "and a second ascent would lose θ. Call second_step() in between"
            )
        for group in self.param_groups:  # groups added to base, or loaded, after wrapping
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        pairs = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not pairs:
            raise RuntimeError("first_step() found no gradient: call loss.backward() first")
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for _, p in pairs]
        # T g for ASAM, g for SAM
        scaled: list[Tensor] = [
            (p.abs() + g["eta"]) * d if g["adaptive"] else d
            for (g, p), d in zip(pairs, grads, strict=True)
        ]
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(s.double()) for s in scaled])
        ).item()
        for (group, p), s in zip(pairs, scaled, strict=True):
            e = s * (p.abs() + group["eta"]) if group["adaptive"] else s  # T² g or g
            theta = self.state[p].get("theta")
            if theta is not None and (theta.dtype, theta.device, theta.shape) == (
                p.dtype,
                p.device,
                p.shape,
            ):  # reuse the copy's memory from step to step
                theta.copy_(p)
            else:  # first step, or the model was moved or cast since: a copy in p's dtype
                self.state[p]["theta"] = p.detach().clone()
            p.add_(e, alpha=group["rho"] / (norm + _TINY))
        self._perturbed = [p for _, p in pairs]
        self.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        """Descent: restore θ exactly, then let the base optimizer step with g' = ∇L(θ + ε̂)."""
        if not self._perturbed:
            raise RuntimeError("second_step() without first_step(): nothing to restore")
        self._restore()
        self._opt_called = True  # a scheduler on SAM itself sees this step (as through step())
        if self.max_grad_norm is not None:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.base.step()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step: ``closure()`` at θ, the ascent, ``closure()`` at θ + ε̂, the descent.

        ``closure`` must compute the loss and call ``backward()``; gradients are cleared
        before each of its two calls, so last step's g' never adds into g. Returns its first
        loss, the loss at θ.

        If the second ``closure()`` raises (or is interrupted), θ is restored before the
        exception propagates, and no step is taken.

        Raises:
            ValueError: without a closure.
        """
        check_callable(closure, "closure")
        if closure is None:
            raise ValueError(
                "SAM needs a closure that computes the loss and calls backward() (two passes "
                "per step); or call first_step() and second_step() yourself"
            )
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.first_step()
        frozen = frozen_bn(self.model) if self.model is not None else contextlib.nullcontext()
        try:
            with torch.enable_grad(), frozen:
                closure()
        except BaseException:
            # an error or interrupt in the second pass must not leave the weights at θ + ε̂
            # (a checkpoint saved then would hold them)
            with torch.no_grad():
                self._restore()
            raise
        self.second_step()
        return loss

    def _restore(self) -> None:
        for p in self._perturbed:
            p.copy_(self.state[p]["theta"])
        self._perturbed = []

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (with its defaults) and SAM's ``rho``/``eta``/
        ``adaptive`` (the group's own, checked, or SAM's); one list of groups serves both.

        Raises:
            TypeError: if ``param_group`` is not a dict, or its ``rho``/``eta``/``adaptive``
                has the wrong type.
            ValueError: if it has no ``params``, shares a parameter with another group, or its
                ``rho``/``eta`` is not finite (``rho`` > 0, ``eta`` >= 0).
        """
        if "base" not in self.__dict__:  # Optimizer.__init__ adding the base's own groups
            super().add_param_group(param_group)
            return
        if not isinstance(param_group, dict):
            raise TypeError(
                f"param_group must be a dict such as {{'params': layer.parameters()}}, got "
                f"{type(param_group).__name__}"
            )
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry (the parameters to add)")
        group = dict(param_group)
        if "rho" in group:
            group["rho"] = _real("rho", group["rho"], positive=True, hint=f"got {group['rho']}")
        if "eta" in group:
            group["eta"] = _real("eta", group["eta"], positive=False, hint=f"got {group['eta']}")
        if not isinstance(group.get("adaptive", False), bool):
            raise TypeError(f"adaptive must be True or False, got {group['adaptive']!r}")
        try:
            self.base.add_param_group(group)
        except ValueError as err:
            raise ValueError(f"param_group cannot be added: {err}") from None
        for key, value in self.defaults.items():
            self.base.param_groups[-1].setdefault(key, value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (the base optimizer's ``zero_grad``)."""
        check_bool(set_to_none, "set_to_none")
        self.base.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (SAM keeps nothing between steps)."""
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict`, or by a plain base optimizer.

        The groups get SAM's ``rho``, ``eta`` and ``adaptive`` where the state has none (a
        plain optimizer's checkpoint resumed under SAM).

        Raises:
            TypeError: if ``state_dict`` is not a dict.
        """
        check_state_dict(state_dict)
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # load_state_dict rebuilt them
        for group in self.param_groups:  # a plain optimizer's state has no rho, eta, adaptive
            for key, value in self.defaults.items():
                group.setdefault(key, value)
