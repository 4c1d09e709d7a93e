"""The hostile-stream corpus (tests/data/hostile, made by tests/make_hostile.py): each stream
raises its recorded error, with a message that names the cause, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import medcodec

CORPUS = Path(__file__).parent / "data" / "hostile"
RECORD = json.loads((CORPUS / "hostile.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORD))
def test_each_hostile_stream_raises_its_error(name):
    entry = RECORD[name]
    error = getattr(medcodec, entry["error"])
    with pytest.raises(error, match=entry["message"] or None):
        medcodec.decompress((CORPUS / entry["file"]).read_bytes())
