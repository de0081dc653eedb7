"""The core: the collector and the posteriors (``docs/architecture.md``).

:mod:`~swag.core.collector` gathers the moments of SGD iterates; :mod:`~swag.core.posterior`,
:mod:`~swag.core.point` and :mod:`~swag.core.multiswag` are the frozen posteriors;
:mod:`~swag.core.layout` says which parameters a flat vector covers; :mod:`swag.core.distributed`
is the sharded mode of all of them. Depends on :mod:`swag.persistence` only.
"""

__all__: list[str] = []
