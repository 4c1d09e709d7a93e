"""The measurement step: guarantees are checked, medcodec failures are recorded, not fatal."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks.codecs import CodecSetting, Encoded, medcodec_status  # noqa: E402
from benchmarks.measure import BoundViolation, Record, measure  # noqa: E402
from benchmarks.volumes import BenchVolume, center_crop, modality_from_name, volume_name  # noqa: E402


class _OffByOne:
    """A 'lossless' codec that is not: adds 1 to every voxel."""

    def unsupported(self, vol):
        return None

    def encode(self, vol):
        return Encoded([vol.array.tobytes()], vol.array.shape, vol.array.dtype)

    def decode(self, enc):
        return np.frombuffer(enc.chunks[0], enc.dtype).reshape(enc.shape) + 1


class _Crashes(_OffByOne):
    def encode(self, vol):
        raise RuntimeError("model not found")


VOL = BenchVolume("ct_test", "CT", np.arange(8 * 10 * 10, dtype=np.int16).reshape(8, 10, 10))


def test_record_numbers_by_hand():
    setting = CodecSetting("fake", "lossy", "x", None, None, _OffByOne())
    rec, mid = measure(setting, VOL)
    assert rec.nbytes == 1600 and rec.bpv == 16.0 and rec.ratio == 1.0
    assert rec.max_abs_error == 1.0 and not rec.exact
    assert rec.psnr == pytest.approx(10 * math.log10(799.0**2))  # MSE 1 over range 799
    assert 0.99 < rec.ssim <= 1.0
    np.testing.assert_array_equal(mid, VOL.array[4] + 1)


def test_strict_setting_breaking_its_bound_stops_the_run():
    with pytest.raises(BoundViolation, match="bound 0"):
        measure(CodecSetting("fake", "lossless", "lossless", None, 0, _OffByOne()), VOL)


def test_non_strict_setting_records_the_broken_bound_and_crashes():
    rec, _ = measure(CodecSetting("medcodec", "lossless", "lossless", 0, 0, _OffByOne(), strict=False), VOL)
    assert rec.bound_ok is False and rec.error is None
    rec, mid = measure(CodecSetting("medcodec", "lossy", "quality=5", 5, None, _Crashes(), strict=False), VOL)
    assert rec.error == "RuntimeError: model not found" and mid is None and rec.bpv is None


def test_json_round_trip_keeps_exactness():
    rec = Record("v", "CT", "c", "lossless", "lossless", None, 0, psnr=math.inf, exact=True, bpv=3.0)
    row = rec.to_json()
    assert row["psnr"] is None
    assert Record.from_json(row).psnr == math.inf


def test_medcodec_import_failure_is_a_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "medcodec", None)  # makes `import medcodec` raise
    msg = medcodec_status()
    assert msg is not None and msg.startswith("medcodec skipped: import failed")


def test_volume_naming_and_crop():
    assert volume_name("/x/ct_chest_a.nii.gz") == "ct_chest_a"
    assert modality_from_name("ct_chest_a") == "CT" and modality_from_name("MR_x") == "MR"
    assert modality_from_name("phantom") == "other"
    crop = center_crop(VOL, (4, 100, 6))
    assert crop.array.shape == (4, 10, 6)
    np.testing.assert_array_equal(crop.array, VOL.array[2:6, :, 2:8])
    assert center_crop(VOL, (100, 100, 100)) is VOL
