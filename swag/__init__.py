"""swag: Bayesian uncertainty from SGD iterates (SWA, SWAG, MultiSWAG) in PyTorch."""

from swag._params import ParamLayout
from swag.bn import update_bn
from swag.collector import Collector
from swag.posterior import Posterior, SWAGPosterior

__version__ = "0.1.0"

__all__ = [
    "Collector",
    "ParamLayout",
    "Posterior",
    "SWAGPosterior",
    "__version__",
    "update_bn",
]
