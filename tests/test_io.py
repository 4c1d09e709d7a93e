"""Volume files through SimpleITK: formats, dtypes and geometry round-trip exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import medcodec
from medcodec import InvalidInputError, Volume, VolumeIOError
from medcodec.files.atomic import write_json
from tests.conftest import synthetic

GEOMETRY = dict(
    spacing=(0.68359375, 0.68359375, 2.5),
    origin=(-175.158203125, -332.158203125, -64.5),
    direction=(
        1.0,
        0.0,
        0.0,
        0.0,
        0.9961946980917455,
        -0.08715574274765817,
        0.0,
        0.08715574274765817,
        0.9961946980917455,
    ),
)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "float32", "float64"])
def test_write_then_read_is_exact(tmp_path, suffix, dtype):
    vol = Volume(synthetic(shape=(3, 11, 7), dtype=dtype), **GEOMETRY)
    path = tmp_path / f"v{suffix}"
    medcodec.write(vol, path)
    back = medcodec.read(path)
    assert back.array.dtype == vol.array.dtype
    assert np.array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=0, atol=1e-6 if suffix.startswith(".nii") else 0)
    np.testing.assert_allclose(back.origin, vol.origin, rtol=0, atol=1e-4 if suffix.startswith(".nii") else 0)
    np.testing.assert_allclose(back.direction, vol.direction, rtol=0, atol=1e-6 if suffix.startswith(".nii") else 0)


def test_axis_order_is_z_y_x(tmp_path):
    a = np.zeros((2, 3, 4), np.int16)
    a[1, 2, 3] = 7
    path = tmp_path / "a.nrrd"
    medcodec.write(a, path)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (4, 3, 2)
    assert image.GetPixel(3, 2, 1) == 7


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "v.nii.gz"
    medcodec.write(synthetic(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]


def test_json_records_are_written_whole_with_plain_values(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    doc = {"loss": float("nan"), "psnr": np.float32(41.5), "n": np.int64(3), "dir": tmp_path, "bpv": [1.0, -np.inf]}
    with pytest.raises(ValueError):  # NaN is not JSON: refused unless asked to write null
        write_json(path, doc)
    assert path.read_text() == "old"
    write_json(path, doc, nonfinite_as_null=True)
    assert json.loads(path.read_text()) == {
        "loss": None,
        "psnr": 41.5,
        "n": 3,
        "dir": str(tmp_path),
        "bpv": [1.0, None],
    }
    with pytest.raises(TypeError):  # not JSON: nothing written, the old record kept
        write_json(path, {"x": object()})
    assert json.loads(path.read_text())["n"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_unknown_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="format"):
        medcodec.write(synthetic(), tmp_path / "v.png")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(VolumeIOError, match="no such file"):
        medcodec.read(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"definitely not nifti")
    with pytest.raises(VolumeIOError, match="cannot read"):
        medcodec.read(bad)
    with pytest.raises(VolumeIOError, match="no DICOM series"):
        medcodec.read(tmp_path)


def _write_dicom_series(folder, array: np.ndarray, spacing, origin) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.123456789"
    for k in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[k : k + 1])
        image.SetSpacing(spacing)
        position = (origin[0], origin[1], origin[2] + k * spacing[2])
        image.SetOrigin(position)
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)


def test_reads_a_dicom_series_folder(tmp_path):
    a = synthetic(shape=(5, 16, 12), dtype="int16")
    _write_dicom_series(tmp_path / "series", a, (0.5, 0.5, 2.0), (-10.0, 20.0, 30.0))
    vol = medcodec.read(tmp_path / "series")
    assert vol.array.shape == (5, 16, 12)
    assert np.array_equal(vol.array.astype(np.int64), a.astype(np.int64))
    np.testing.assert_allclose(vol.spacing, (0.5, 0.5, 2.0), atol=1e-6)
    np.testing.assert_allclose(vol.origin, (-10.0, 20.0, 30.0), atol=1e-4)
    assert vol.metadata.get("0008|0060", "").strip() == "CT"


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    a = synthetic(shape=(6, 12, 10), dtype="int16")
    _write_dicom_series(tmp_path / "series", a, (0.5, 0.5, 2.0), (0.0, 0.0, 0.0))
    (tmp_path / "series" / "slice003.dcm").unlink()
    with pytest.raises(VolumeIOError, match="not evenly spaced.*4 mm between slices 3 and 4"):
        medcodec.read(tmp_path / "series")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_and_inf_in_a_float_nifti_survive_reading_and_lossless_coding(tmp_path, suffix):
    a = (np.arange(2 * 3 * 4, dtype=np.float32) / 3).reshape(2, 3, 4)
    a[0, 0, 0], a[1, 2, 3], a[1, 0, 0] = np.nan, np.inf, -np.inf
    path = tmp_path / f"v{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    vol = medcodec.read(path)
    assert np.array_equal(vol.array.view(np.uint32), a.view(np.uint32))  # NaN, ±inf and every other bit
    back = medcodec.decompress(medcodec.compress(vol, max_error=0)).array
    assert np.array_equal(back.view(np.uint32), a.view(np.uint32))


def test_writing_metaimage_prints_no_itk_warnings(tmp_path, capfd):
    vol = medcodec.Volume(synthetic(shape=(2, 6, 5), dtype="int16"), metadata={"descrip": "", "aux_file": "", "k": "v"})
    medcodec.write(vol, tmp_path / "v.mha")
    assert capfd.readouterr().err == ""
    assert np.array_equal(medcodec.read(tmp_path / "v.mha").array, vol.array)
