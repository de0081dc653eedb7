# Typing stub: at run time swag.plots is swag.evaluation.plots (swag/_aliases.py).
from swag.evaluation.plots import *
from swag.evaluation.plots import __all__ as __all__
