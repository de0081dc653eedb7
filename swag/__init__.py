"""swag: Bayesian uncertainty from SGD iterates (SWA, SWAG, MultiSWAG) in PyTorch.

Collect during training with :class:`Collector`, freeze a :class:`SWAGPosterior`, and predict
with :func:`predict`; :mod:`swag.metrics` scores the result. Plots live in :mod:`swag.plots`
and dataset readers in :mod:`swag.data` (imported on demand).

The code lives in parts: :mod:`swag.core`, :mod:`swag.evaluation`, :mod:`swag.family`,
:mod:`swag.persistence`, :mod:`swag.integrations`, :mod:`swag.bench` (``docs/architecture.md``).
The old module paths still import (:mod:`swag._aliases`).
"""

import sys

from swag import _aliases
from swag._persist import load, save
from swag.core._posterior_base import Density, Posterior
from swag.core.collector import Collector
from swag.core.layout import ParamLayout
from swag.core.multiswag import MultiSWAG
from swag.core.point import PointPosterior
from swag.core.posterior import SWAGPosterior
from swag.evaluation import metrics
from swag.evaluation.bn import update_bn
from swag.evaluation.fit_scale import fit_scale
from swag.evaluation.predict import (
    BNRefresh,
    Classification,
    GaussianRegression,
    PredictOptions,
    predict,
)
from swag.evaluation.temperature import apply_temperature, fit_temperature
from swag.family import subspace as subspace  # registers the subspace posterior's kind
from swag.family.averaging import EMA, LAWA, PostHocEMA, PowerEMA

_aliases.install(sys.modules[__name__])

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "LAWA",
    "BNRefresh",
    "Classification",
    "Collector",
    "Density",
    "GaussianRegression",
    "MultiSWAG",
    "ParamLayout",
    "PointPosterior",
    "PostHocEMA",
    "Posterior",
    "PowerEMA",
    "PredictOptions",
    "SWAGPosterior",
    "__version__",
    "apply_temperature",
    "fit_scale",
    "fit_temperature",
    "load",
    "metrics",
    "predict",
    "save",
    "update_bn",
]
