"""swag: Bayesian uncertainty from SGD iterates (SWA, SWAG, MultiSWAG) in PyTorch.

Collect during training with :class:`Collector`, freeze a :class:`SWAGPosterior`, and predict
with :func:`predict`; :mod:`swag.metrics` scores the result. Plots live in :mod:`swag.plots`
and dataset readers in :mod:`swag.data` (imported on demand).
"""

from swag import metrics
from swag._persist import load, save
from swag._posterior_base import Density, Posterior
from swag.averaging import EMA, LAWA, PostHocEMA, PowerEMA
from swag.bn import update_bn
from swag.collector import Collector
from swag.layout import ParamLayout
from swag.multiswag import MultiSWAG
from swag.point import PointPosterior
from swag.posterior import SWAGPosterior
from swag.predict import (
    BNRefresh,
    Classification,
    GaussianRegression,
    PredictOptions,
    predict,
)
from swag.scale import fit_scale
from swag.temperature import apply_temperature, fit_temperature

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
