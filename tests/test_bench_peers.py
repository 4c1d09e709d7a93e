"""Peer codecs tomoz and SZ3 (pysz): exact / bounded round trips, skipping, their table columns."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))  # benchmarks/ is not installed

from benchmarks import codecs, run  # noqa: E402
from benchmarks.measure import Record, measure  # noqa: E402
from benchmarks.report import render_results  # noqa: E402
from benchmarks.volumes import BenchVolume  # noqa: E402

needs_tomoz = pytest.mark.skipif(codecs.tomoz is None, reason="tomoz is not installed")
needs_pysz = pytest.mark.skipif(codecs.pysz is None, reason="pysz (SZ3) is not installed")


def _volume(dtype: str, lo: int, hi: int, shape=(5, 24, 20), seed=0) -> BenchVolume:
    """Smooth structure plus noise spanning exactly lo..hi (both ends reached)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    a = np.sin(6 * x + 2 * z) * np.cos(5 * y) + 0.05 * rng.standard_normal(shape)
    a = lo + (a - a.min()) / (a.max() - a.min()) * (hi - lo)
    return BenchVolume(f"synthetic_{dtype}_{lo}_{hi}", "CT", np.round(a).astype(dtype))


def _setting(key: str) -> codecs.CodecSetting:
    return next(s for s in codecs.baseline_settings(codecs=[codecs.TOMOZ, codecs.SZ3])[0] if s.key == key)


@needs_tomoz
@pytest.mark.parametrize(
    "vol",
    [
        _volume("int16", -1024, 2000),  # CT-like, passed as int16
        _volume("uint16", 0, 4095),
        _volume("int32", -1000, 3000),  # not a tomoz type: shifted into uint16
    ],
    ids=lambda v: v.name,
)
def test_tomoz_round_trip_is_exact(vol):
    codec = codecs.TomozCodec()
    assert codec.unsupported(vol) is None
    enc = codec.encode(vol)
    dec = codec.decode(enc)
    assert dec.dtype == vol.array.dtype and dec.shape == vol.array.shape
    np.testing.assert_array_equal(dec, vol.array)
    assert len(enc.chunks) == 1 and 0 < enc.nbytes < vol.raw_bytes  # one stream for the volume
    rec, _ = measure(_setting("tomoz lossless"), vol, compute_ssim=False)
    assert rec.exact and rec.bound_ok and rec.max_abs_error == 0 and math.isinf(rec.psnr)


@needs_tomoz
def test_tomoz_skips_what_it_cannot_take():
    codec = codecs.TomozCodec()
    assert "integer" in codec.unsupported(BenchVolume("f", "MR", np.zeros((2, 4, 4), np.float32)))
    assert "16 bits" in codec.unsupported(BenchVolume("w", "CT", np.array([[[0, 70000]]], np.int32)))


@needs_pysz
@pytest.mark.parametrize(
    "vol",
    [
        _volume("int16", -1024, 2000),
        _volume("uint16", 0, 4095),  # values at 0: an undershoot must be clipped, not wrapped
        _volume("uint8", 0, 255),  # both ends of the type
        _volume("uint32", 0, 70000),  # goes to pysz as int64
    ],
    ids=lambda v: v.name,
)
def test_sz3_keeps_every_voxel_within_each_bound(vol):
    sizes = []
    for bound in codecs.SZ3_ABS_BOUNDS:
        setting = _setting(f"SZ3 ABS={bound}")
        assert setting.mode == "near-lossless" and setting.bound == bound
        enc = setting.codec_impl.encode(vol)
        dec = setting.codec_impl.decode(enc)
        assert dec.dtype == vol.array.dtype and dec.shape == vol.array.shape
        err = np.abs(dec.astype(np.int64) - vol.array.astype(np.int64))
        assert err.max() <= bound, (bound, int(err.max()))
        assert err.max() > 0  # really lossy: the bound is used, not silently lossless
        rec, _ = measure(setting, vol, compute_ssim=False)
        assert rec.bound_ok is True and 0 < rec.max_abs_error <= bound and rec.error is None
        sizes.append(enc.nbytes)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]  # looser bound, fewer bytes


@needs_pysz
def test_sz3_skips_float_volumes():
    vol = BenchVolume("f", "MR", np.zeros((2, 8, 8), np.float32))
    assert "integer" in _setting("SZ3 ABS=1").codec_impl.unsupported(vol)


def test_peers_are_skipped_with_a_reason_when_absent(monkeypatch):
    monkeypatch.setattr(codecs, "tomoz", None)
    monkeypatch.setattr(codecs, "pysz", None)
    settings, skipped = codecs.baseline_settings(codecs=[codecs.GZIP, codecs.TOMOZ, codecs.SZ3])
    assert {s.codec for s in settings} == {codecs.GZIP}
    assert skipped == ["tomoz skipped: tomoz not installed", "SZ3 skipped: pysz (SZ3) not installed"]
    assert "tomoz" not in codecs.versions() and "pysz (SZ3)" not in codecs.versions()
    # Not asked for: no message.
    assert codecs.baseline_settings(codecs=[codecs.GZIP])[1] == []


def test_import_guard_without_the_packages():
    code = (
        "import sys; sys.modules['tomoz'] = sys.modules['pysz'] = None\n"
        "from benchmarks import codecs\n"
        "assert codecs.tomoz is None and codecs.pysz is None\n"
        "s, skipped = codecs.baseline_settings(codecs=['tomoz', 'SZ3'])\n"
        "assert s == [] and len(skipped) == 2, skipped\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=_ROOT, check=True, timeout=120)


def test_run_writes_the_skip_reasons(tmp_path, monkeypatch):
    sitk = pytest.importorskip("SimpleITK")
    monkeypatch.setattr(codecs, "tomoz", None)
    monkeypatch.setattr(codecs, "pysz", None)
    image = sitk.GetImageFromArray(_volume("int16", -1000, 1000, shape=(4, 16, 16)).array)
    image.SetSpacing((0.7, 0.7, 2.5))
    path = tmp_path / "ct_tiny.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    code = run.main(
        ["--no-medcodec", "--no-figures", "--no-ssim", "--codecs", "gzip-6,tomoz,SZ3", "--out", str(out), str(path)]
    )
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert "tomoz skipped: tomoz not installed" in text and "SZ3 skipped: pysz (SZ3) not installed" in text
    assert "| ct_tiny | CT, 4×16×16, 2.5 mm |" in text  # the lossless row states modality, shape, z


def _rec(volume: str, codec: str, mode: str, param: str, bound: int | None, bpv: float, max_err: float = 0.0) -> Record:
    return Record(
        volume,
        "CT",
        codec,
        mode,
        param,
        None if bound is None else float(bound),
        bound,
        nbytes=1,
        bpv=bpv,
        ratio=16 / bpv,
        psnr=math.inf if max_err == 0 else 60.0,
        max_abs_error=max_err,
        exact=max_err == 0,
        bound_ok=True,
        enc_mbps=1.0,
        dec_mbps=1.0,
        enc_peak_mb=1.0,
        dec_peak_mb=1.0,
    )


def test_tables_put_the_peers_beside_their_counterparts():
    vols = [
        {
            "name": "ct_a",
            "modality": "CT",
            "shape": [30, 512, 512],
            "spacing": [0.65, 0.65, 8.0],
            "dtype": "int16",
            "source": "a.nii.gz",
        },
        {"name": "mr_b", "modality": "MR", "shape": [21, 120, 45], "dtype": "int16", "source": "b"},
    ]
    recs = []
    for v in ("ct_a", "mr_b"):
        recs += [
            _rec(v, codecs.JPEGXL, "lossless", "lossless", 0, 5.0),
            _rec(v, codecs.TOMOZ, "lossless", "lossless", 0, 4.5),
            _rec(v, codecs.GZIP, "lossless", "level=6", 0, 9.0),
        ]
        for b in (1, 2):
            recs += [
                _rec(v, codecs.MEDCODEC, "near-lossless", f"max_error={b}", b, 3.0 / b, b),
                _rec(v, codecs.SZ3, "near-lossless", f"ABS={b}", b, 3.5 / b, b),
                _rec(v, codecs.JPEGLS, "near-lossless", f"NEAR={b}", b, 3.8 / b, b),
            ]
    text = render_results(recs, {"command": "x", "date": "d", "volumes": vols})
    lossless = text.split("## Lossless")[1].split("##")[0]
    assert "effort 7" in lossless
    assert "| volume | modality, z×y×x, z spacing | gzip-6 | JPEG XL (effort 7) | tomoz |" in lossless
    assert "| ct_a | CT, 30×512×512, 8 mm | 9.000 | 5.000 | 4.500 |" in lossless
    assert "| mr_b | MR, 21×120×45, — |" in lossless  # no spacing recorded: a dash, not a guess
    near = text.split("## Near-lossless")[1].split("##")[0]
    assert (
        "| JPEG-LS NEAR=1 | SZ3 ABS=1 | medcodec max_error=1 | JPEG-LS NEAR=2 | SZ3 ABS=2 | medcodec max_error=2 |"
    ) in near
    assert "| ct_a | CT, 30×512×512, 8 mm | 3.800 | 3.500 | 3.000 | 1.900 | 1.750 | 1.500 |" in near
    assert "| **max abs error (all volumes)** |  | 1 | 1 | 1 | 2 | 2 | 2 |" in near
    assert "| ct_a | CT | 30×512×512 | 0.65×0.65×8 | int16 | a.nii.gz |" in text  # volume legend
    assert "SZ3 ABS (median)" in text and "JPEG-LS NEAR (median)" in text
