"""Persistence: the one file format (``docs/architecture.md``).

:mod:`~swag.persistence._io` is the one atomic writer and the one validator (safetensors with
checked metadata); :mod:`~swag.persistence._checked_state` restores an object's state only once
it is checked. Depends on nothing else in swag; ``swag.save`` / ``swag.load`` sit on the face.
"""

__all__: list[str] = []
