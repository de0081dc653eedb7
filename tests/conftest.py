"""Shared fixtures: a device parameter (CPU always, CUDA when present) and a seeded generator."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every numerical test that takes this fixture runs on CPU, and on CUDA when there is one."""
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
