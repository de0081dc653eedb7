"""Progress output of ``swag bench``: tqdm bars in a terminal, plain periodic lines elsewhere.

In a CI log or behind ``| tee`` a tqdm bar writes a carriage return per update (hundreds of KB
per run); there :class:`Progress` prints one ordinary line per stage and one every ``every``
seconds inside a long stage instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from tqdm.auto import tqdm


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


class Progress:
    """Where the bench says what it is doing.

    Args:
        enabled: False prints nothing at all (``--no-progress``).
        stream: where to write (default ``sys.stderr``).
        every: seconds between two plain lines of one stage, when ``stream`` is no terminal.
        tty: force terminal (tqdm) or plain output; default: ``stream.isatty()``.
    """

    def __init__(
        self,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float = 30.0,
        tty: bool | None = None,
    ) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every = every
        self.tty = enabled and (self.stream.isatty() if tty is None else tty)
        self.start = time.perf_counter()

    @property
    def bars(self) -> bool:
        """Whether library calls (``swag.predict``, ``swag.fit_scale``) may show tqdm bars."""
        return self.tty

    def note(self, message: str) -> None:
        """One line: what the bench starts doing now."""
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:5.0f} s] {message}", file=self.stream, flush=True)

    def bar(self, total: int, desc: str, unit: str = "step") -> Bar:
        """A bar over ``total`` units: tqdm in a terminal, else plain lines every ``every`` s."""
        if self.tty:
            bar: Bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream)
            return bar
        return _PlainBar(self, total, desc, unit)


class _PlainBar:
    """A bar that prints ``desc: n/total unit (p%)`` lines, at most one per ``every`` seconds."""

    def __init__(self, progress: Progress, total: int, desc: str, unit: str) -> None:
        self.progress, self.total, self.desc, self.unit = progress, total, desc, unit
        self.n, self.postfix, self.shown = 0, "", -1
        self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.progress.every:
            self.last = now
            self._line()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.shown != self.n:
            self._line()

    def _line(self) -> None:
        self.shown = self.n
        extra = f", {self.postfix}" if self.postfix else ""
        pct = 100 * self.n / max(self.total, 1)
        self.progress.note(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%){extra}")
