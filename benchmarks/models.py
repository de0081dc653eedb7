"""The benchmark models: a small CNN and two MLPs spanning two decades of parameter counts."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _cnn() -> nn.Module:
    """~0.36M parameters in 16 tensors: three conv-BN blocks and two linear layers (32×32×3)."""
    blocks: list[nn.Module] = []
    channels = [3, 32, 64, 128]
    for c_in, c_out in itertools.pairwise(channels):
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        blocks.append(nn.MaxPool2d(2))
    return nn.Sequential(
        *blocks, nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _mlp(*widths: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return build


@dataclass(frozen=True)
class Spec:
    """A benchmark model: how to build it and the shape of one input (without the batch)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


MODELS: dict[str, Spec] = {
    "tiny-mlp": Spec(_mlp(32, 64, 10), (32,)),  # ~2.8k, for the smoke test
    "cnn-0.36M": Spec(_cnn, (3, 32, 32)),
    "mlp-3.2M": Spec(_mlp(1024, 1536, 1024, 10), (1024,)),
    "mlp-29M": Spec(_mlp(3072, 4096, 4096, 10), (3072,)),
}
"""Name → spec. The names carry the parameter count."""


def make_iterates(
    name: str, count: int, device: torch.device, *, seed: int = 0, step: float = 1e-2
) -> list[nn.Module]:
    """``count`` copies of model ``name`` a small random step apart: the iterates to collect."""
    torch.manual_seed(seed)  # benchmark-only: model initialisation
    first = MODELS[name].build().to(device)
    models = [first]
    g = torch.Generator(device).manual_seed(seed)
    for _ in range(count - 1):
        model = MODELS[name].build().to(device)
        with torch.no_grad():
            for p, q in zip(model.parameters(), models[-1].parameters(), strict=True):
                p.copy_(q + step * torch.randn(q.shape, generator=g, device=device))
        models.append(model)
    return models


def num_params(model: nn.Module) -> int:
    """P, the number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
