# Typing stub: at run time swag.optim is swag.family.optim (swag/_aliases.py).
from swag.family.optim import *
from swag.family.optim import __all__ as __all__
