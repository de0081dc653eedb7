"""Argument checks shared by the framework callbacks (no framework imported)."""

from __future__ import annotations


def check_rank_and_start(max_rank: int, start: int | float, unit: str) -> None:
    """``max_rank`` an int ≥ 0; ``start`` a ``unit`` (int ≥ 0: epoch or step) or a fraction in
    [0, 1) of training.

    Raises:
        ValueError: naming the argument and what it accepts.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 0:
        raise ValueError(f"max_rank must be an int >= 0, got {max_rank!r}")
    bad_start = (
        isinstance(start, bool)
        or not isinstance(start, int | float)
        or (isinstance(start, int) and start < 0)
        or (isinstance(start, float) and not 0 <= start < 1)
    )
    if bad_start:
        raise ValueError(
            f"start must be {'an' if unit[0] in 'aeiou' else 'a'} {unit} (int >= 0) or a "
            f"fraction in [0, 1), got {start!r}"
        )
