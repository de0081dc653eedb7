# Typing stub: at run time swag.conformal is swag.evaluation.conformal (swag/_aliases.py).
from swag.evaluation.conformal import *
from swag.evaluation.conformal import __all__ as __all__
