"""``help(Class.__init__)`` shows the class's arguments, documented once, in the class."""

from __future__ import annotations

import inspect
import re
from typing import TypeVar

T = TypeVar("T", bound=type)

_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:$")


def document_init(cls: T) -> T:
    """Class decorator: give ``cls.__init__`` the ``Args:`` section of the class docstring.

    Python shows a class's docstring for ``help(Class)`` but only ``__init__``'s own (for a
    dataclass: none) for ``help(Class.__init__)``, which IDEs show on a call. The arguments stay
    written once, in the class docstring (``Args:``, or ``Attributes:`` for a dataclass whose
    fields are its arguments), where the rendered API reference reads them.
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    for header in ("Args:", "Attributes:"):
        if header in lines:
            start = lines.index(header) + 1
            end = next((i for i in range(start, len(lines)) if _SECTION.match(lines[i])), None)
            section = "\n".join(lines[start:end]).rstrip()
            break
    else:
        raise ValueError(f"{cls.__name__}'s docstring has no Args: or Attributes: section")
    init = cls.__init__  # type: ignore[misc]
    init.__doc__ = (
        f"Initialise the {cls.__name__}; every argument is checked here.\n\nArgs:\n{section}\n"
    )
    return cls
