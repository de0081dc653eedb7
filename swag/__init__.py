"""swag: Bayesian uncertainty from SGD iterates (SWA, SWAG, MultiSWAG) in PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
