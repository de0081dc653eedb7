# Typing stub: at run time swag.metrics is swag.evaluation.metrics (swag/_aliases.py).
from swag.evaluation.metrics import *
from swag.evaluation.metrics import __all__ as __all__
