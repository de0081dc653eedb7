# Typing stub: at run time swag.snapshots is swag.family.snapshots (swag/_aliases.py).
from swag.family.snapshots import *
from swag.family.snapshots import __all__ as __all__
