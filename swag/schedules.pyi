# Typing stub: at run time swag.schedules is swag.family.schedules (swag/_aliases.py).
from swag.family.schedules import *
from swag.family.schedules import __all__ as __all__
