# Typing stub: at run time swag.corruptions is swag.evaluation.corruptions (swag/_aliases.py).
from swag.evaluation.corruptions import *
from swag.evaluation.corruptions import __all__ as __all__
