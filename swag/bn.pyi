# Typing stub: at run time swag.bn is swag.evaluation.bn (swag/_aliases.py).
from swag.evaluation.bn import *
from swag.evaluation.bn import __all__ as __all__
