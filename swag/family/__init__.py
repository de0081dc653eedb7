"""The family: methods built on the core (``docs/architecture.md``).

Training side: :mod:`~swag.family.schedules`, SAM (:mod:`~swag.family.optim`),
:mod:`~swag.family.snapshots`, SWALP (:mod:`~swag.family.lowp`), SWAP (:mod:`~swag.family.swap`),
:mod:`~swag.family.averaging`; after training: :mod:`~swag.family.subspace`,
:mod:`~swag.family.landscape`. Depends on the core, persistence and evaluation.
"""

__all__: list[str] = []
