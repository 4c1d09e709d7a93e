"""JSON files of a run folder (records, caches, results), each written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medcodec.files.atomic import write_json

__all__ = ["read_json", "write_json"]


def read_json(path: Path, default: Any) -> Any:
    """The document in ``path``, or ``default`` when there is no such file."""
    return json.loads(path.read_text()) if path.exists() else default
