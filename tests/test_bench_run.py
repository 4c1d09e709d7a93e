"""A tiny end-to-end run: files in, RESULTS.md / results.json / figures out."""

from __future__ import annotations

import json
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imagecodecs", reason="imagecodecs (the bench extra) is not installed")
sitk = pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import codecs as bench_codecs  # noqa: E402
from benchmarks import run  # noqa: E402

#: The optional peer codecs installed here (each skipped with a reason otherwise).
PEERS = {name for name, mod in (("tomoz", bench_codecs.tomoz), ("SZ3", bench_codecs.pysz)) if mod is not None}


def _write(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (8, 24, 28)), indexing="ij")
    smooth = np.sin(5 * x + z) * np.cos(4 * y)
    ct = np.round(500 + 1200 * smooth + 20 * rng.standard_normal(smooth.shape)).astype(np.int16) - 1000
    mr = np.round(800 + 700 * smooth + 10 * rng.standard_normal(smooth.shape)).clip(0).astype(np.uint16)
    return [_write(tmp_path / "ct_synth.nii.gz", ct), _write(tmp_path / "mr_synth.nii.gz", mr)]


def _fake_medcodec() -> types.ModuleType:
    """A stand-in with medcodec's public API: uniform quantisation + zlib."""
    mod = types.ModuleType("medcodec")

    class Volume:
        def __init__(self, array, spacing=(1, 1, 1), origin=(0, 0, 0), direction=None):
            self.array = np.asarray(array)

    def compress(vol, *, quality=None, max_error=None):
        a = vol.array.astype(np.int64)
        step = 2 * max_error + 1 if max_error is not None else int(2 ** ((100 - quality) / 12))
        q = np.round(a / step).astype(np.int64)  # |a - q*step| <= max_error
        head = json.dumps({"shape": a.shape, "dtype": str(vol.array.dtype), "step": step}).encode()
        return len(head).to_bytes(4, "little") + head + zlib.compress(q.tobytes(), 9)

    def decompress(data):
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4 : 4 + n])
        q = np.frombuffer(zlib.decompress(data[4 + n :]), np.int64).reshape(head["shape"])
        return Volume((q * head["step"]).astype(head["dtype"]))

    mod.Volume, mod.compress, mod.decompress, mod.__version__ = Volume, compress, decompress, "fake"
    return mod


def test_end_to_end_baselines_and_medcodec(tmp_path, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "medcodec", _fake_medcodec())
    out = tmp_path / "out"
    code = run.main(["--quick", "--out", str(out), "--qualities", "40,70,95", *map(str, files)])
    assert code == 0

    results = json.loads((out / "results.json").read_text())
    recs = results["records"]
    assert {r["volume"] for r in recs} == {"ct_synth", "mr_synth"}
    assert {r["codec"] for r in recs} == {
        "gzip-6",
        "zstd-19",
        "JPEG 2000",
        "HTJ2K",
        "JPEG-LS",
        "JPEG XL",
        "medcodec",
        *PEERS,
    }
    assert all(r["exact"] for r in recs if r["mode"] == "lossless")
    assert all(r["bound_ok"] for r in recs if r["mode"] == "near-lossless")
    assert {r["modality"] for r in recs} == {"CT", "MR"}

    text = (out / "RESULTS.md").read_text()
    assert f"python -m benchmarks.run --quick --out {out}" in text
    for heading in ("## Lossless", "## Near-lossless", "## Lossy", "## BD-rate", "## Speed", "## Peak memory"):
        assert heading in text
    assert "**CT mean (n=1)**" in text and "**MR mean (n=1)**" in text
    assert "medcodec vs JPEG 2000" in text and "medcodec max_error=2" in text
    assert "| JPEG XL (effort 7) |" in text
    if "tomoz" in PEERS:
        assert "| JPEG XL (effort 7) | tomoz |" in text
    if "SZ3" in PEERS:
        assert "| JPEG-LS NEAR=2 | SZ3 ABS=2 | medcodec max_error=2 |" in text
    for fig in results["meta"]["figures"]:
        assert (out / fig).stat().st_size > 0
    if results["meta"]["figures"]:
        assert "figures/panel_ct_synth.png" in results["meta"]["figures"]


def test_runs_without_medcodec(tmp_path, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "medcodec", None)  # `import medcodec` fails
    out = tmp_path / "out"
    code = run.main(
        ["--quick", "--no-figures", "--codecs", "gzip-6,JPEG-LS,medcodec", "--out", str(out), str(files[0])]
    )
    assert code == 0
    text = (out / "RESULTS.md").read_text()
    assert "medcodec skipped: import failed" in text
    codecs = {r["codec"] for r in json.loads((out / "results.json").read_text())["records"]}
    assert codecs == {"gzip-6", "JPEG-LS"}


def test_medcodec_breaking_its_bound_is_reported_and_fails_the_exit_code(tmp_path, files, monkeypatch):
    fake = _fake_medcodec()
    good = fake.compress
    fake.compress = lambda vol, **kw: (
        good(vol, max_error=kw["max_error"] + 1) if kw.get("max_error") else good(vol, **kw)
    )
    monkeypatch.setitem(sys.modules, "medcodec", fake)
    out = tmp_path / "out"
    code = run.main(
        [
            "--quick",
            "--no-figures",
            "--no-ssim",
            "--codecs",
            "medcodec",
            "--qualities",
            "50",
            "--max-errors",
            "0,2",
            "--out",
            str(out),
            str(files[0]),
        ]
    )
    assert code == 1
    text = (out / "RESULTS.md").read_text()
    assert "## Failures and broken guarantees" in text and "bound 2 broken" in text


def test_an_empty_sweep_runs_none_of_its_settings(tmp_path, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "medcodec", _fake_medcodec())
    out = tmp_path / "out"
    argv = ["--quick", "--no-figures", "--no-ssim", "--codecs", "medcodec", "--out", str(out), str(files[0])]
    assert run.main([*argv, "--qualities", "", "--max-errors", "0,2"]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert {(r["mode"], r["param"]) for r in records} == {("lossless", "lossless"), ("near-lossless", "max_error=2")}
    assert run.main([*argv, "--qualities", "40", "--max-errors", ""]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert {(r["mode"], r["param"]) for r in records} == {("lossy", "quality=40")}
