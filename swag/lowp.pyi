# Typing stub: at run time swag.lowp is swag.family.lowp (swag/_aliases.py).
from swag.family.lowp import *
from swag.family.lowp import __all__ as __all__
