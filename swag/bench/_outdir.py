"""The run folder: checked before any training, filled in a temporary sibling, renamed at the end.

A run either appears whole under its name or not at all: a full disk or a crash halfway leaves
the temporary sibling (removed on failure), never half a report. An existing folder is kept:
the run goes to the first free ``NAME-2``, ``NAME-3``, ... unless ``overwrite`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIN_FREE_BYTES = 50 * 2**20  # a report with its figures is a few MB


class OutDirError(ValueError):
    """The output folder cannot be used; the message names ``--out`` and the fix."""


@dataclass
class RunDir:
    """Where a run is written (``tmp``) and where it lands (``final``)."""

    final: Path
    tmp: Path
    overwrite: bool
    moved: bool = False  # True when ``final`` is not the folder that was asked for

    def commit(self) -> Path:
        """Move the finished run into place (replacing the old folder with ``overwrite``)."""
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        """Remove the unfinished run."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def prepare(out: str | os.PathLike[str], *, overwrite: bool = False) -> RunDir:
    """Check ``out`` and create the temporary sibling folder the run is written into.

    Raises:
        OutDirError: ``out`` is a file or lies inside one, its parent is not writable, or the
            disk holds less than 50 MB free.
    """
    asked = Path(out)
    if asked.exists() and not asked.is_dir():
        raise OutDirError(f"--out {asked} is a file, not a folder; pick another --out")
    final = asked
    if asked.exists() and not overwrite:
        final = _free_name(asked)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.tmp-"))
    except (FileExistsError, NotADirectoryError) as e:
        raise OutDirError(f"--out {asked}: {e.filename} is a file, not a folder") from e
    except PermissionError as e:
        raise OutDirError(f"--out {asked}: cannot write into {parent} (permission denied)") from e
    free = shutil.disk_usage(tmp).free
    if free < MIN_FREE_BYTES:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutDirError(
            f"--out {asked}: only {free / 2**20:.0f} MB free on that disk; the report needs 50 MB"
        )
    os.chmod(tmp, 0o777 & ~_umask())
    return RunDir(final=final, tmp=tmp, overwrite=overwrite, moved=final != asked)


def _free_name(path: Path) -> Path:
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
