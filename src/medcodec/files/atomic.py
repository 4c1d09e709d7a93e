"""Writing a file whole or not at all: through a temporary file in its folder, then a rename.

Streams and volume files (the command line, :func:`medcodec.write`, :mod:`medcodec.files.large`)
go through :func:`write_atomic`, so an interruption or a failure never leaves a partial file
under the final name, and an existing file is replaced only when asked. Records (run folders,
benchmark results) go through :func:`write_json`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedcodecError, OutputExistsError, VolumeIOError

__all__ = ["write_atomic", "write_json"]


def _new_file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give (mkstemp makes files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(tmp: Path, dest: Path, *, force: bool) -> None:
    """Move the finished temporary file ``tmp`` onto ``dest``.

    Raises:
        OutputExistsError: ``dest`` appeared meanwhile and ``force`` is false.
    """
    os.chmod(tmp, _new_file_mode())
    if force:
        os.replace(tmp, dest)
        return
    try:
        # A hard link creates dest only if absent, atomically: no window to clobber a file
        # that another process created after our first check.
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputExistsError(f"{dest} exists; use --force to overwrite it") from None
    except OSError:
        # No hard links on this file system (FAT, some network mounts): check, then rename.
        if dest.exists():
            raise OutputExistsError(f"{dest} exists; use --force to overwrite it") from None
        os.replace(tmp, dest)
        return
    tmp.unlink()


def write_atomic(dest: Path, write: Callable[[Path], None], *, force: bool, suffix: str = ".tmp") -> None:
    """Write ``dest`` through a temporary file in its folder, leaving nothing behind on failure.

    Args:
        dest: Final path.
        write: Writes the complete content to the path it is given.
        force: Replace ``dest`` if it exists.
        suffix: Ending of the temporary file (SimpleITK picks the format from it).

    Raises:
        OutputExistsError: ``dest`` exists and ``force`` is false.
        VolumeIOError: The temporary file cannot be created, written or renamed.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise VolumeIOError(f"cannot write {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _publish(tmp, dest, force=force)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, MedcodecError):
            raise
        raise VolumeIOError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:  # includes KeyboardInterrupt: never leave a partial temp file
        tmp.unlink(missing_ok=True)
        raise


def _plain(value: Any, null: bool) -> Any:
    """``value`` with numpy scalars as numbers, paths as strings and, where ``null``, non-finite
    floats as None."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if null and isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, null) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, null) for v in value]
    return value


def write_json(dest: Path, doc: Any, *, nonfinite_as_null: bool = False) -> None:
    """Write the JSON document ``doc`` to ``dest`` whole or not at all, replacing any old one.

    JSON has no NaN or infinity: they are refused (ValueError), or written as null where
    ``nonfinite_as_null`` (a run's records, where a diverged loss is a result to keep)."""
    text = json.dumps(_plain(doc, nonfinite_as_null), indent=1, allow_nan=False) + "\n"
    write_atomic(Path(dest), lambda tmp: tmp.write_text(text, encoding="utf-8"), force=True)
