# Typing stub: at run time swag.distributed is swag.core.distributed (swag/_aliases.py).
from swag.core.distributed import *
from swag.core.distributed import __all__ as __all__
