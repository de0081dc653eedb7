# Typing stub: at run time swag.swap is swag.family.swap (swag/_aliases.py).
from swag.family.swap import *
from swag.family.swap import __all__ as __all__
