"""JSON files of a run folder (records, caches, results), each written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_json", "write_json"]


def read_json(path: Path, default: Any) -> Any:
    """The document in ``path``, or ``default`` when there is no such file."""
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` to ``path`` whole or not at all (``medcodec.files.atomic.write_atomic``).

    numpy scalars are written as numbers and paths as strings; nan and infinity are refused.
    """
    from medcodec.files.atomic import write_atomic

    text = json.dumps(doc, indent=1, allow_nan=False, default=_plain_value) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text), force=True)


def _plain_value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)
