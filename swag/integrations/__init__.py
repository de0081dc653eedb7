"""Adapters for the frameworks people train with: Lightning and the Hugging Face ``Trainer``.

Each adapter is a callback that calls :meth:`swag.Collector.collect` for you and keeps the
collector's state in the framework's checkpoints. The frameworks are optional: importing
:mod:`swag.integrations.lightning` needs ``pip install 'swag-toolkit[lightning]'``,
:mod:`swag.integrations.transformers` needs ``pip install 'swag-toolkit[transformers]'``.
Nothing else in swag imports them. :class:`ResumableSampler` (plain torch) shuffles a train
loader in an order that survives a resume. :class:`CallbackState` is what a callback needs to
resume, as ``swag.save(callback, path)`` writes it and ``swag.load(path)`` gives it back.
"""

from __future__ import annotations

from swag.integrations._sampler import ResumableSampler
from swag.integrations._state import CallbackState

__all__ = ["CallbackState", "ResumableSampler"]
