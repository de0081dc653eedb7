"""The one device rule for ``generator=``: draw where the numbers live, seeded from the caller's.

A ``torch.Generator`` lives on one device, and ``torch.randn(..., device=d, generator=g)``
raises when ``g`` is not on ``d``. Every swag function that takes ``generator=`` passes it
through :func:`generator_for` first:

- ``None`` stays ``None``: the global RNG of the drawing device, everywhere.
- A generator already on the drawing device is used as it is.
- A generator on another device seeds a fresh generator on the drawing device with one
  64-bit draw from it. Results are then reproducible per (seed, device) pair, the caller's
  generator advances by exactly one draw, and nothing raises.
"""

from __future__ import annotations

import torch

from swag.core._checks import check_generator


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` name one device (``cuda`` and ``cuda:0`` do)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def generator_for(
    device: torch.device | str, generator: torch.Generator | None
) -> torch.Generator | None:
    """A generator that can draw on ``device``, following the rule in this module's docstring.

    Raises:
        TypeError: if ``generator`` is neither a ``torch.Generator`` nor None.
    """
    check_generator(generator)
    if generator is None:
        return None
    device = torch.device(device)
    if same_device(generator.device, device):
        return generator
    return _seeded(device, generator)


def common_generator(
    device: torch.device | str, generator: torch.Generator | None
) -> torch.Generator:
    """A generator on ``device`` whose state can be copied for common random numbers.

    ``generator`` as :func:`generator_for` maps it; None seeds one from the global RNG (one
    64-bit draw), so a run after ``torch.manual_seed`` is reproducible.
    """
    mapped = generator_for(device, generator)
    if mapped is not None:
        return mapped
    return _seeded(torch.device(device), None)


def _seeded(device: torch.device, source: torch.Generator | None) -> torch.Generator:
    """A new generator on ``device`` seeded by one 64-bit draw from ``source`` (None: global)."""
    where = source.device if source is not None else torch.device("cpu")
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=source, device=where)
    return torch.Generator(device).manual_seed(int(seed) % 2**64)
