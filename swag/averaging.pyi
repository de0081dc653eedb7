# Typing stub: at run time swag.averaging is swag.family.averaging (swag/_aliases.py).
from swag.family.averaging import *
from swag.family.averaging import __all__ as __all__
