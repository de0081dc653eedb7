# Typing stub: at run time swag.subspace is swag.family.subspace (swag/_aliases.py).
from swag.family.subspace import *
from swag.family.subspace import __all__ as __all__
