"""Model files: deterministic bytes, content-hash names, lookup and clear failures."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import medcodec
from medcodec import ModelError, ModelNotFoundError
from medcodec.model.files import list_models, load_model, resolve_model
from medcodec.model.network import ARCHITECTURES, Autoencoder
from medcodec.training.export import export_model
from tests.conftest import synthetic


def _export(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = Autoencoder(ARCHITECTURES["mc3d-xs"])
    calib = [np.linspace(-1, 1, 16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16)]
    return export_model(model, tmp_path, calib)


def test_export_is_deterministic_and_named_by_hash(tmp_path):
    a, b = _export(tmp_path / "a"), _export(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert a.name == f"mc3d-xs-{digest[:8]}.mcw"
    assert load_model(a).sha256 == digest


def test_a_model_file_is_used_by_compress_and_decompress(tmp_path):
    path = _export(tmp_path)
    floats = synthetic().astype(np.float32) + np.float32(0.25)  # float arithmetic runs the network
    data = medcodec.compress(floats, max_error=1, model=str(path))
    assert medcodec.info(data).model_name == path.stem
    out = medcodec.decompress(data, model=str(path)).array
    assert np.abs(out.astype(np.float64) - floats).max() <= 1
    with pytest.raises(ModelNotFoundError):
        medcodec.decompress(data)  # not shipped, and no model given


def test_integer_streams_need_no_model(tmp_path):
    path = _export(tmp_path)
    data = medcodec.compress(synthetic(), max_error=1, model=str(path))
    assert medcodec.info(data).model_name == ""
    assert np.abs(medcodec.decompress(data).array.astype(np.int64) - synthetic()).max() <= 1


def test_streams_without_a_network_ignore_a_given_model(tmp_path):
    path = _export(tmp_path)
    floats = synthetic().astype(np.float32) + np.float32(0.25)  # lossless fractional floats: raw byte planes
    data = medcodec.compress(floats, max_error=0, model=str(path))
    assert medcodec.info(data).model_name == ""
    assert np.array_equal(medcodec.decompress(data).array, floats)
    with pytest.raises(ModelNotFoundError):
        medcodec.compress(floats, max_error=0, model=str(tmp_path / "missing.mcw"))  # still checked


def test_shipped_default_model_is_found_by_name():
    names = list_models()
    assert names and all(n.startswith("mc3d-") for n in names)
    assert resolve_model(None) == resolve_model(medcodec.DEFAULT_MODEL)
    assert load_model(names[0]).name == names[0]


def test_unknown_and_broken_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(tmp_path / "missing.mcw")
    bad = tmp_path / "bad.mcw"
    bad.write_bytes(b"MCWEIGHT\xff\xff\xff\x00{")
    with pytest.raises(ModelError):
        load_model(bad)


def test_a_deeply_nested_model_header_is_a_model_error(tmp_path):
    import struct

    from medcodec.model.files import MAGIC

    header = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.mcw"
    path.write_bytes(MAGIC + struct.pack("<I", len(header)) + header)
    with pytest.raises(ModelError, match="nests too deeply") as excinfo:
        load_model(path)
    assert str(path) in str(excinfo.value)


def test_streams_find_their_model_by_name_in_model_folders(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from medcodec import cli
    from medcodec.model.files import MODEL_PATH_ENV

    model_file = Path(__file__).parent / "data" / "mc3d-xs-9c74720b.mcw"
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / model_file.name).write_bytes(model_file.read_bytes())
    vol = np.random.default_rng(0).normal(100, 20, size=(4, 24, 20)).astype(np.float32)
    data = medcodec.compress(vol, max_error=0.5, model=str(model_file))
    monkeypatch.delenv(MODEL_PATH_ENV, raising=False)
    with pytest.raises(medcodec.ModelNotFoundError, match="found in none of") as excinfo:
        medcodec.decompress(data)
    assert "mc3d-xs-9c74720b" in str(excinfo.value) and "--model-dir" in str(excinfo.value)
    want = medcodec.decompress(data, model=str(model_file)).array
    assert np.array_equal(medcodec.decompress(data, model_dirs=[folder]).array, want)
    monkeypatch.setenv(MODEL_PATH_ENV, str(folder))
    assert np.array_equal(medcodec.decompress(data).array, want)
    monkeypatch.delenv(MODEL_PATH_ENV)
    (tmp_path / "s.mcz").write_bytes(data)
    out = tmp_path / "out.nrrd"
    assert cli.main(["decompress", str(tmp_path / "s.mcz"), "-o", str(out), "--model-dir", str(folder), "-q"]) == 0
    assert np.array_equal(medcodec.read(out).array, want)
