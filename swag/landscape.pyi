# Typing stub: at run time swag.landscape is swag.family.landscape (swag/_aliases.py).
from swag.family.landscape import *
from swag.family.landscape import __all__ as __all__
