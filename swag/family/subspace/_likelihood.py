"""The data log-likelihood of a network as a function of its subspace coordinates z."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from swag.core._checks import check_callable, check_device, check_positive, check_reiterable
from swag.evaluation._batches import move_to
from swag.evaluation.bn import InputFn, default_input_fn
from swag.family.subspace._basis import Subspace

TargetFn = Callable[[Any], Tensor]
Kind = Literal["classification", "gaussian"]


def default_target_fn(batch: Any) -> Tensor:
    """The target of a batch: the second item of a tuple/list batch ``(x, y)``."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        target: Tensor = batch[1]
        return target
    raise ValueError(
        "cannot find the target in a batch that is not an (input, target) tuple; pass target_fn="
    )


def check_class_target(logits: Tensor | None, target: object) -> None:
    """Refuse targets that are not integer class indices ``(B,)`` for logits ``(B, C)``.

    With ``logits`` None only the dtype and the 1-D shape are checked. Float targets would
    be read as class probabilities by ``cross_entropy`` and ``(B, 1)`` targets fail deep inside
    it; both are refused here with the fix.
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices (torch.long), got {target.dtype}; "
            "convert with target.long() (class probabilities are not supported)"
        )
    if logits is None:
        if target.dim() != 1:
            raise ValueError(
                f"target must have shape (B,), got {tuple(target.shape)}; squeeze a (B, 1) "
                "target with target.squeeze(1)"
            )
    elif logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must have shape (B,) for logits (B, C) = {tuple(logits.shape)}, got "
            f"{tuple(target.shape)}; squeeze a (B, 1) target with target.squeeze(1)"
        )


class SubspaceLikelihood:
    """log p(D | θ̂ + zB): the summed log-likelihood of every example of ``loader``.

    The network is evaluated functionally (``torch.func.functional_call``) at θ(z) in eval
    mode: dropout off, BatchNorm with the model's running statistics (those of the weights it
    holds, e.g. the SWA weights after :func:`swag.update_bn`). Parameters outside the subspace's
    layout keep the model's values. ``model`` itself is never modified.

    Likelihoods (outputs as :func:`swag.predict` reads them):

    - ``"classification"``: the model returns logits ``(B, C)``; log p = −Σ cross-entropy.
    - ``"gaussian"``: the model returns ``(B, 2)`` = (mean, variance), or only the mean
      (``(B,)`` or ``(B, 1)``) with a fixed ``noise_var``; log p = Σ log N(y | μ, σ²).

    One call costs one forward pass over the whole loader (for ``"gaussian"`` and
    ``"classification"`` alike), the unit in which the samplers report their cost. Creating
    the likelihood reads the loader's targets once to count the examples N (no forward pass).

    Args:
        model: the architecture (its covered parameters are replaced by θ(z)).
        subspace: where z lives.
        loader: the training batches ``(x, y)`` (or any batch with ``input_fn``/``target_fn``),
            re-iterable (a list or a ``DataLoader``; a generator is refused, TypeError: it is
            read once to count the examples and again at every call).
        likelihood: ``"classification"`` or ``"gaussian"``.
        noise_var: the observation variance for mean-only regression outputs.
        input_fn: batch → model input (default: the first item).
        target_fn: batch → target tensor (default: the second item).
        device: where to run the model and the data (default: the subspace's device).

    Raises:
        TypeError: for a one-shot iterator as ``loader``, float class targets, or arguments
            of the wrong type (each named).
        ValueError: for an empty loader, ``(B, 1)`` class targets, an unknown likelihood, or
            ``noise_var`` that is not finite and > 0 or given without ``"gaussian"``.
    """

    def __init__(
        self,
        model: nn.Module,
        subspace: Subspace,
        loader: Iterable[Any],
        *,
        likelihood: Kind = "classification",
        noise_var: float | None = None,
        input_fn: InputFn | None = None,
        target_fn: TargetFn | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(subspace, Subspace):
            raise TypeError(
                f"subspace must be a swag.subspace.Subspace, got {type(subspace).__name__}"
            )
        check_reiterable(loader, "loader")
        check_callable(input_fn, "input_fn")
        check_callable(target_fn, "target_fn")
        check_device(device)
        if likelihood not in ("classification", "gaussian"):
            raise ValueError(
                f"likelihood must be 'classification' or 'gaussian', got {likelihood!r}"
            )
        if noise_var is not None:
            check_positive(noise_var, "noise_var")
            if likelihood != "gaussian":
                raise ValueError(
                    "noise_var must be > 0 and only given with likelihood='gaussian', got "
                    f"noise_var={noise_var!r} with likelihood={likelihood!r}"
                )
        subspace.layout.resolve(model)
        self.model = model
        self.subspace = subspace
        self.loader = loader
        self.likelihood = likelihood
        self.noise_var = noise_var
        self.input_fn = input_fn or default_input_fn
        self.target_fn = target_fn or default_target_fn
        self.device = torch.device(device) if device is not None else subspace.shift.device
        self.calls = 0
        self.size = 0
        for batch in loader:
            target = self.target_fn(batch)
            if likelihood == "classification":
                check_class_target(None, target)
            self.size += len(target)
        if self.size == 0:
            raise ValueError("loader yielded no example; pass the training batches")

    def batches(self) -> Iterator[tuple[Any, Tensor]]:
        """``(input, target)`` per batch of ``loader``, moved to ``device``."""
        for batch in self.loader:
            target = self.target_fn(batch).to(self.device)
            yield move_to(self.input_fn(batch), self.device), target

    def batch_log_lik(self, z: Tensor, inputs: Any, target: Tensor) -> Tensor:
        """Σ log p(y | x, θ(z)) over one batch, a scalar (differentiable in ``z``)."""
        theta = self.subspace.theta(z.to(self.device))
        names = self.subspace.layout.names
        params = dict(zip(names, self.subspace.layout.split(theta), strict=True))
        was_training = self.model.training
        self.model.eval()
        try:
            args = inputs if isinstance(inputs, tuple) else (inputs,)
            kwargs = inputs if isinstance(inputs, dict) else None
            out = (
                functional_call(self.model, params, (), kwargs)
                if kwargs is not None
                else functional_call(self.model, params, args)
            )
        finally:
            self.model.train(was_training)
        return self._log_prob(out, target)

    def _log_prob(self, out: Tensor, target: Tensor) -> Tensor:
        if self.likelihood == "classification":
            check_class_target(out, target)
            return -nn.functional.cross_entropy(out, target, reduction="sum")
        if self.noise_var is not None:
            mean, var = out.reshape(target.shape), torch.full_like(target, self.noise_var)
        else:
            if out.shape[-1] != 2:
                raise ValueError(
                    "a 'gaussian' likelihood needs outputs (B, 2) = (mean, variance), or "
                    f"noise_var= for mean-only outputs; got {tuple(out.shape)}"
                )
            mean, var = out[..., 0].reshape(target.shape), out[..., 1].reshape(target.shape)
        res = (target - mean).square() / var + var.log() + math.log(2 * math.pi)
        return -0.5 * res.sum()

    def __call__(self, z: Tensor) -> Tensor:
        """log p(D | θ(z)) summed over the loader, a float64 scalar; one full pass."""
        self.calls += 1
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for inputs, target in self.batches():
            total = total + self.batch_log_lik(z, inputs, target).to(torch.float64)
        return total
