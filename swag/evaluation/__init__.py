"""Prediction and evaluation (``docs/architecture.md``).

:mod:`~swag.evaluation.predict` (one evaluation loop), BN refresh (:mod:`~swag.evaluation.bn`),
:mod:`~swag.evaluation.metrics`, temperature scaling, :mod:`~swag.evaluation.fit_scale`,
conformal sets, corruptions and plots. Depends on :mod:`swag.core` and :mod:`swag.data`.
"""

__all__: list[str] = []
