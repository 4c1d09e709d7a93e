"""The report's comparison tables: the 0.5-3 bpv band and SZ3 at equal PSNR."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import Record  # noqa: E402
from benchmarks.report import _band_section, _sz3_section  # noqa: E402

VOLUMES = [{"name": "v", "modality": "CT"}]


def _lossy(codec: str, points) -> list[Record]:
    return [
        Record("v", "CT", codec, "lossy", f"q={i}", float(i), None, bpv=r, psnr=p) for i, (r, p) in enumerate(points)
    ]


def test_sz3_rows_read_medcodecs_curve_at_sz3s_psnr():
    # medcodec: log2(bpv) linear in PSNR, 1 bpv at 40 dB doubling every 10 dB.
    records = _lossy("medcodec", [(0.5, 30), (1, 40), (2, 50), (4, 60)])
    records.append(Record("v", "CT", "SZ3", "near-lossless", "ABS=2", 2.0, 2, bpv=4.0, psnr=50.0))
    records.append(Record("v", "CT", "SZ3", "near-lossless", "ABS=1", 1.0, 1, bpv=8.0, psnr=75.0))
    text = _sz3_section(records, VOLUMES)
    row = next(line for line in text.splitlines() if "ABS=2" in line)
    assert "| 2.000 |" in row and "0.500" in row  # 2 bpv where SZ3 needs 4
    assert "ABS=1" in text and text.count("—") >= 2  # 75 dB is beyond medcodec's sweep


def test_band_table_integrates_where_jpeg2000_spends_half_to_three_bpv():
    j2k = _lossy("JPEG 2000", [(0.25, 30), (0.5, 35), (1, 40), (2, 45), (4, 50)])
    half = _lossy("medcodec", [(r / 2, p) for r, p in [(0.25, 30), (0.5, 35), (1, 40), (2, 45), (4, 50)]])
    text = _band_section(j2k + half, VOLUMES)
    assert "-50.0%" in text
    assert "35.0–47.9 dB" in text  # 0.5 bpv at 35 dB, 3 bpv interpolated on the log-rate


@pytest.mark.parametrize("codec", ["medcodec", "JPEG 2000"])
def test_band_table_needs_both_curves(codec):
    assert _band_section(_lossy(codec, [(1, 40), (2, 50)]), VOLUMES) == ""
