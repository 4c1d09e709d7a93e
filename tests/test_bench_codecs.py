"""Baseline codec adapters on small synthetic volumes: lossless round trips, NEAR bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imagecodecs", reason="imagecodecs (the bench extra) is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import codecs  # noqa: E402
from benchmarks.measure import measure  # noqa: E402
from benchmarks.volumes import BenchVolume  # noqa: E402


def _volume(dtype: str, lo: int, hi: int, shape=(6, 40, 36), seed=0) -> BenchVolume:
    """Smooth structure plus noise, like a small scan, spanning lo..hi."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    smooth = np.sin(6 * x + 2 * z) * np.cos(5 * y)
    a = smooth + 0.03 * rng.standard_normal(shape)
    a = lo + (a - a.min()) / (a.max() - a.min()) * (hi - lo)
    return BenchVolume(f"synthetic_{dtype}", "CT", np.round(a).astype(dtype))


VOLUMES = [
    _volume("int16", -1024, 2000),  # CT-like: negative, range needs uint16
    _volume("int16", 6, 248),  # int16 holding an 8-bit range: goes to uint8
    _volume("uint16", 0, 4095),
    _volume("uint8", 0, 255),
    _volume("int32", -1000, 3000),
]
LOSSLESS = [s for s in codecs.baseline_settings()[0] if s.mode == "lossless"]


@pytest.mark.parametrize("vol", VOLUMES, ids=lambda v: v.name)
@pytest.mark.parametrize("setting", LOSSLESS, ids=lambda s: s.key)
def test_lossless_baselines_round_trip(setting, vol):
    enc = setting.codec_impl.encode(vol)
    dec = setting.codec_impl.decode(enc)
    assert dec.dtype == vol.array.dtype
    np.testing.assert_array_equal(dec, vol.array)
    assert 0 < enc.nbytes < vol.raw_bytes


def test_every_image_codec_is_there():
    families = {s.codec for s in LOSSLESS}
    assert {codecs.GZIP, codecs.ZSTD, codecs.JPEG2000, codecs.JPEGLS, codecs.JPEGXL} <= families


@pytest.mark.parametrize("near", [1, 2, 4])
@pytest.mark.parametrize("vol", VOLUMES[:3], ids=lambda v: v.name)
def test_jpegls_near_holds_its_bound(near, vol):
    setting = next(s for s in codecs.baseline_settings()[0] if s.key == f"JPEG-LS NEAR={near}")
    rec, _ = measure(setting, vol, compute_ssim=False)  # strict: raises if the bound breaks
    assert rec.bound_ok and 0 < rec.max_abs_error <= near
    lossless = next(s for s in LOSSLESS if s.codec == codecs.JPEGLS)
    assert rec.nbytes < lossless.codec_impl.encode(vol).nbytes


def test_lossy_sweeps_trade_rate_for_psnr():
    vol = VOLUMES[0]
    for family in (codecs.JPEG2000, codecs.JPEGXL):
        recs = [
            measure(s, vol, compute_ssim=False)[0]
            for s in codecs.baseline_settings(quick=True)[0]
            if s.codec == family and s.mode == "lossy"
        ]
        assert len(recs) == 3
        by_rate = sorted(recs, key=lambda r: r.bpv)
        assert [r.psnr for r in by_rate] == sorted(r.psnr for r in recs), family


def test_jpeg2000_target_reads_as_psnr_over_the_volume_range():
    vol = VOLUMES[2]
    setting = next(s for s in codecs.baseline_settings()[0] if s.key == "JPEG 2000 target=45dB")
    rec, _ = measure(setting, vol, compute_ssim=False)
    assert abs(rec.psnr - 45) < 3  # OpenJPEG's rate control is approximate


def test_unsigned_target_and_shift():
    a = np.array([[[-1024, 2000]]], np.int16)
    assert codecs._unsigned_target(a) == (np.dtype(np.uint16), 1024)
    assert codecs._unsigned_target(np.array([[[6, 248]]], np.int16)) == (np.dtype(np.uint8), -6)
    assert "integer" in codecs._unsigned_target(np.zeros((1, 1, 2), np.float32))
    assert "16 bits" in codecs._unsigned_target(np.array([[[0, 70000]]], np.int32))


def test_codec_filter_and_float_volumes_are_skipped():
    settings, skipped = codecs.baseline_settings(codecs=[codecs.JPEGLS])
    assert {s.codec for s in settings} == {codecs.JPEGLS} and not skipped
    vol = BenchVolume("f", "MR", np.zeros((2, 8, 8), np.float32))
    assert settings[0].codec_impl.unsupported(vol) is not None
