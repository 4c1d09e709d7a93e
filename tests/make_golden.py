"""Regenerate the golden streams in tests/data (run by hand, never by the tests).

Golden streams pin the format: every future version must decode them to the
recorded checksums. Only add new ones; never regenerate existing ones unless the
format's major version changes.

    PYTHONPATH=src python tests/make_golden.py     # adds missing format 2.0 to 5.0 streams
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import medcodec
from medcodec.model.network import ARCHITECTURES, Autoencoder
from medcodec.training.export import export_model

HERE = Path(__file__).resolve().parent / "data"


def golden_volume() -> np.ndarray:
    rng = np.random.default_rng(20261129)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 33), np.linspace(-1, 1, 29), indexing="ij")
    v = 900 * np.exp(-(x**2 + y**2) * 2) + 40 * np.sin(5 * z) + rng.normal(0, 12, x.shape) - 300
    return v.astype(np.int16)


def wide_volume() -> np.ndarray:
    """An int32 volume whose residuals need raw bits past 16 and 32 (noise over 2**33)."""
    rng = np.random.default_rng(20261203)
    v = rng.integers(-(2**31), 2**31 - 1, size=(5, 9, 11), dtype=np.int64)
    v[:, :4] = np.arange(4 * 11).reshape(4, 11) * 1000  # a smooth part
    return v.astype(np.int32)


def add_format_2() -> None:
    """Add the format 2.0 (predictive path) streams beside the format 1.0 ones; existing entries stay."""
    record = json.loads((HERE / "golden.json").read_text())
    volume = medcodec.Volume(golden_volume(), spacing=(0.8, 0.8, 3.0), origin=(-10.0, 20.0, 5.5))
    cases = {
        "v2-lossy-q60": (volume, {"quality": 60}),
        "v2-near-lossless-2": (volume, {"max_error": 2}),
        "v2-lossless": (volume, {"max_error": 0}),
        "v2-lossless-int32": (medcodec.Volume(wide_volume()), {"max_error": 0}),
    }
    for name, (vol, kwargs) in cases.items():
        _add_stream(record, name, vol, kwargs, "2.0")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


def _add_stream(record: dict, name: str, vol: medcodec.Volume, kwargs: dict, version: str) -> None:
    """Write golden stream ``name`` and record its voxels' checksum, unless it exists already."""
    if name in record["streams"]:
        return
    data = medcodec.compress(vol, **kwargs)
    (HERE / f"golden-{name}.mcz").write_bytes(data)
    decoded = medcodec.decompress(data, tables=kwargs.get("tables")).array
    record["streams"][name] = {
        "file": f"golden-{name}.mcz",
        "voxels_sha256": hashlib.sha256(decoded.astype(decoded.dtype.newbyteorder("<")).tobytes()).hexdigest(),
        "dtype": str(decoded.dtype),
        "shape": list(decoded.shape),
        "format": version,
    }


def palette_volume() -> np.ndarray:
    """A float32 volume with 60 distinct values (NaN, -0.0 and a subnormal among them): a palette stream."""
    rng = np.random.default_rng(20261203)
    levels = (np.arange(57, dtype=np.float64) * 0.731 - 11.0).astype(np.float32)
    v = levels[rng.integers(0, 57, size=(6, 21, 19)).cumsum(axis=2) % 57]
    v.ravel()[[3, 70, 500]] = np.array([np.nan, -0.0, 1e-45], dtype=np.float32)
    return v


def add_format_3() -> None:
    """Add the format 3.0 (palette path) stream; existing entries stay."""
    record = json.loads((HERE / "golden.json").read_text())
    vol = medcodec.Volume(palette_volume(), spacing=(0.5, 0.5, 1.0))
    _add_stream(record, "v3-lossless-palette", vol, {"max_error": 0}, "3.0")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


def iso_volume() -> np.ndarray:
    """An int16 volume of isotropic voxels, deep enough for the transform's z levels."""
    rng = np.random.default_rng(20261204)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    v = 600 * np.exp(-(x**2 + y**2 + z**2) * 3) + 80 * np.cos(4 * x * y) + rng.normal(0, 6, x.shape) - 100
    return v.astype(np.int16)


def add_format_4() -> None:
    """Add the format 4.0 (transform path) streams; existing entries stay."""
    record = json.loads((HERE / "golden.json").read_text())
    thick = medcodec.Volume(golden_volume(), spacing=(0.8, 0.8, 3.0), origin=(-10.0, 20.0, 5.5))
    iso = medcodec.Volume(iso_volume(), spacing=(1.0, 1.0, 1.0))
    _add_stream(record, "v4-lossy-q60", thick, {"quality": 60, "tables": "none"}, "4.0")
    _add_stream(record, "v4-lossy-iso-q50", iso, {"quality": 50, "tables": "none"}, "4.0")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


def add_format_4_1() -> None:
    """Add the format 4.1 streams (transform tiles whose tables refer to a table prior) and the
    test prior they name, trained on a volume of their own; existing entries stay."""
    from medcodec.coding.priors import save_prior
    from medcodec.training.tables import volume_counts

    record = json.loads((HERE / "golden.json").read_text())
    if "tables" not in record:
        rng = np.random.default_rng(20261205)
        train = (iso_volume().astype(np.int32) + rng.integers(-40, 40, (20, 40, 36))).astype(np.int16)
        record["tables"] = save_prior(volume_counts(train, (40, 60, 80)), {"purpose": "golden streams"}, HERE).name
    tables = str(HERE / record["tables"])
    thick = medcodec.Volume(golden_volume(), spacing=(0.8, 0.8, 3.0), origin=(-10.0, 20.0, 5.5))
    iso = medcodec.Volume(iso_volume(), spacing=(1.0, 1.0, 1.0))
    _add_stream(record, "v41-lossy-q60", thick, {"quality": 60, "tables": tables}, "4.1")
    _add_stream(record, "v41-lossy-iso-q40", iso, {"quality": 40, "tables": tables}, "4.1")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


def regional_volume() -> np.ndarray:
    """An int16 volume of two textures side by side, one tile large enough for weight regions."""
    rng = np.random.default_rng(20261206)
    shape = (8, 130, 128)
    v = np.cumsum(rng.normal(0, 4, shape), axis=2) + np.cumsum(rng.normal(0, 4, shape), axis=1)
    v[:, :, 64:] = 300 + 3 * np.cumsum(rng.normal(0, 6, (8, 130, 64)), axis=1)
    return np.clip(np.round(v), -32768, 32767).astype(np.int16)


def add_format_5() -> None:
    """Add the format 5.0 streams (predictive sections with weight regions); existing entries stay."""
    record = json.loads((HERE / "golden.json").read_text())
    vol = medcodec.Volume(regional_volume(), spacing=(0.7, 0.7, 5.0))
    _add_stream(record, "v5-lossless-regions", vol, {"max_error": 0}, "5.0")
    _add_stream(record, "v5-near-lossless-3-regions", vol, {"max_error": 3}, "5.0")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    HERE.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = Autoencoder(ARCHITECTURES["mc3d-xs"])
    vol = golden_volume()
    calib = [np.clip(vol[:, :32, :24].astype(np.float32) / 1000, -1, 1)[:, :, :]]
    calib = [np.pad(c, ((0, 1), (0, 0), (0, 0)), mode="edge") for c in calib]
    model_path = export_model(model, HERE, calib, meta={"purpose": "golden streams for tests"})
    record = {"model": model_path.name, "streams": {}}
    volume = medcodec.Volume(vol, spacing=(0.8, 0.8, 3.0), origin=(-10.0, 20.0, 5.5))
    cases = {"lossy-q60": {"quality": 60}, "near-lossless-2": {"max_error": 2}, "lossless": {"max_error": 0}}
    for name, kwargs in cases.items():
        data = medcodec.compress(volume, model=str(model_path), **kwargs)
        (HERE / f"golden-{name}.mcz").write_bytes(data)
        decoded = medcodec.decompress(data, model=str(model_path)).array
        record["streams"][name] = {
            "file": f"golden-{name}.mcz",
            "voxels_sha256": hashlib.sha256(decoded.astype("<i2").tobytes()).hexdigest(),
            "dtype": str(decoded.dtype),
            "shape": list(decoded.shape),
        }
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    if not (HERE / "golden.json").exists():
        main()
    add_format_2()
    add_format_3()
    add_format_4()
    add_format_4_1()
    add_format_5()
