"""Locating the project's real volumes (``../shared/data``) and their train/test split.

The data are never copied into the repository. They are found through the
``MEDCODEC_DATA`` environment variable, else ``../shared/data`` relative to the
current directory or, when this package runs from a source checkout, to the checkout's root
(an installed package has no such root and looks no further than the current directory).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataEntry", "find_data_dir", "load_manifest"]

_CHECKOUT = Path(__file__).resolve().parents[3]  # src/medcodec/training/ -> the repository


@dataclass(frozen=True)
class DataEntry:
    """One volume listed in ``manifest.json``."""

    path: Path
    split: str
    site: str
    modality: str
    dtype: str
    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".gz").removesuffix(".nii")


def find_data_dir() -> Path | None:
    """Return the data folder holding ``manifest.json``, or None where there is none."""
    candidates = []
    if os.environ.get("MEDCODEC_DATA"):
        candidates.append(Path(os.environ["MEDCODEC_DATA"]))
    candidates.append(Path.cwd() / ".." / "shared" / "data")
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "src" / "medcodec").is_dir():
        candidates.append(_CHECKOUT / ".." / "shared" / "data")
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c.resolve()
    return None


def load_manifest(data_dir: Path | None = None, split: str | None = None) -> list[DataEntry]:
    """Entries of the data folder's manifest, optionally only one split ("train" or "test")."""
    data_dir = data_dir or find_data_dir()
    if data_dir is None:
        raise FileNotFoundError("no data folder: set MEDCODEC_DATA or provide ../shared/data")
    rows = json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))
    entries = [
        DataEntry(
            path=Path(data_dir) / r["file"],
            split=r["split"],
            site=r["site"],
            modality=r["modality"],
            dtype=r["dtype"],
            shape=tuple(r["shape_zyx"]),
        )
        for r in rows
    ]
    return [e for e in entries if split is None or e.split == split]
