"""Volumes larger than memory: coded from and to disk a slab at a time, the same streams as in memory."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import medcodec
from medcodec import cli
from medcodec.files.large import compress_file, decompress_file
from tests.conftest import synthetic


@pytest.fixture
def volume() -> np.ndarray:
    return synthetic(shape=(70, 20, 300)).astype(np.int16)  # 2 x 1 x 2 tiles


def _nii(path, a: np.ndarray) -> None:
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((1.0, -2.0, 3.5))
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(img, str(path), False)


@pytest.mark.parametrize("options", [{"max_error": 0}, {"quality": 50}])
def test_a_file_coded_slab_by_slab_gives_the_in_memory_stream_byte_for_byte(tmp_path, volume, options):
    _nii(tmp_path / "v.nii", volume)
    compress_file(tmp_path / "v.nii", tmp_path / "v.mcz", **options)
    assert (tmp_path / "v.mcz").read_bytes() == medcodec.compress(medcodec.read(tmp_path / "v.nii"), **options)
    np.save(tmp_path / "v.npy", volume)
    compress_file(tmp_path / "v.npy", tmp_path / "n.mcz", **options)
    assert (tmp_path / "n.mcz").read_bytes() == medcodec.compress(volume, **options)


def test_a_stream_decoded_slab_by_slab_is_a_nifti_with_its_geometry(tmp_path, volume):
    _nii(tmp_path / "v.nii", volume)
    compress_file(tmp_path / "v.nii", tmp_path / "v.mcz", max_error=0)
    decompress_file(tmp_path / "v.mcz", tmp_path / "out.nii")
    decompress_file(tmp_path / "v.mcz", tmp_path / "out.npy")
    back, original = medcodec.read(tmp_path / "out.nii"), medcodec.read(tmp_path / "v.nii")
    assert np.array_equal(back.array, volume) and np.array_equal(np.load(tmp_path / "out.npy"), volume)
    np.testing.assert_allclose(back.spacing, original.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, original.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, original.direction, atol=1e-6)


def test_a_damaged_stream_leaves_no_output_and_unsupported_files_are_named(tmp_path, volume):
    data = bytearray(medcodec.compress(volume, max_error=0))
    (tmp_path / "ok.mcz").write_bytes(bytes(data))
    data[-100] ^= 0xFF
    (tmp_path / "bad.mcz").write_bytes(bytes(data))
    with pytest.raises(medcodec.CorruptStreamError):
        decompress_file(tmp_path / "bad.mcz", tmp_path / "out.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mcz", "ok.mcz"]
    with pytest.raises(medcodec.InvalidInputError, match=r"\.nii \(uncompressed\) or \.npy"):
        decompress_file(tmp_path / "ok.mcz", tmp_path / "out.nii.gz")
    medcodec.write(volume[:4], tmp_path / "v.nii.gz")
    with pytest.raises(medcodec.InvalidInputError, match=r"\.nii \(uncompressed\) or \.npy"):
        compress_file(tmp_path / "v.nii.gz", tmp_path / "v.mcz")


def test_the_cli_codes_large_files_slab_by_slab(tmp_path, volume, monkeypatch):
    monkeypatch.setattr(cli, "OUT_OF_CORE_BYTES", 1)  # every file counts as large here
    _nii(tmp_path / "v.nii", volume)
    assert cli.main(["compress", str(tmp_path / "v.nii"), "--lossless", "--strip-metadata", "-q"]) == 0
    assert medcodec.info((tmp_path / "v.mcz").read_bytes()).metadata_keys == []
    assert cli.main(["decompress", str(tmp_path / "v.mcz"), "-o", str(tmp_path / "out.nii"), "-q"]) == 0
    assert np.array_equal(medcodec.read(tmp_path / "out.nii").array, volume)


def test_a_large_file_it_cannot_read_in_slabs_is_read_whole(tmp_path, volume, monkeypatch):
    from medcodec.files.large import readable

    monkeypatch.setattr(cli, "OUT_OF_CORE_BYTES", 1)
    img = sitk.GetImageFromArray(volume[:3])
    sitk.WriteImage(img, str(tmp_path / "v.nii"), False)
    raw = bytearray((tmp_path / "v.nii").read_bytes())
    raw[112:116] = np.float32(2.0).tobytes()  # scl_slope 2: not a plain layout
    (tmp_path / "v.nii").write_bytes(bytes(raw))
    assert not readable(tmp_path / "v.nii")
    assert cli.main(["compress", str(tmp_path / "v.nii"), "--lossless", "-q"]) == 0
    assert np.array_equal(
        medcodec.decompress((tmp_path / "v.mcz").read_bytes()).array, medcodec.read(tmp_path / "v.nii").array
    )
