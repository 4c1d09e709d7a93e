"""Reading and writing volume files through SimpleITK.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) for reading and writing, and a folder holding one DICOM
series for reading. Arrays are (z, y, x); spacing, origin and direction are in
SimpleITK's (x, y, z) LPS convention. Dtype and geometry round-trip exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, VolumeIOError
from ..volume import Volume, as_volume

__all__ = ["read", "write", "volume_suffix", "VOLUME_SUFFIXES", "DETACHED_SUFFIXES"]

#: File name endings of the volume formats :func:`write` writes (and :func:`read` reads, with DICOM).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Formats whose header names a second data file beside it: no single atomic rename writes them.
DETACHED_SUFFIXES = (".nhdr", ".mhd")


def volume_suffix(name: str) -> str:
    """The volume format ending of a file name.

    Raises:
        InvalidInputError: The name ends with none of :data:`VOLUME_SUFFIXES`.
    """
    suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise InvalidInputError(f"cannot tell the format of {name!r}; use one of {', '.join(VOLUME_SUFFIXES)}")
    return suffix


def _sitk():
    import SimpleITK as sitk

    return sitk


def read(path: str | os.PathLike) -> Volume:
    """Read a volume file or a DICOM series folder.

    Raises:
        VolumeIOError: The path does not exist or cannot be read as a 3D volume.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(f"no such file or folder: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(sitk, path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.LoadPrivateTagsOn()
            image = reader.Execute()
    except RuntimeError as exc:  # SimpleITK reports every failure as RuntimeError
        raise VolumeIOError(f"cannot read {path}: {_first_line(exc)}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeIOError(f"{path}: multi-component (vector/RGB) images are not supported")
    if image.GetDimension() not in (2, 3):
        raise VolumeIOError(f"{path}: {image.GetDimension()}D images are not supported (3D only)")
    array = sitk.GetArrayFromImage(image)
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetDimension() == 2:
        array = array[np.newaxis]
        spacing = (*spacing, 1.0)
        origin = (*origin, 0.0)
        d = direction
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    if array.dtype.kind == "f" and path.name.lower().endswith((".nii", ".nii.gz")):
        array = _restore_nonfinite(path, array)
    metadata = file_metadata(image)
    try:
        return Volume(array, spacing, origin, direction, metadata)
    except InvalidInputError as exc:
        raise VolumeIOError(f"{path}: {exc}") from None


def file_metadata(image) -> dict[str, str]:
    """The header fields a SimpleITK image (or reader) carries from its file, without ITK's
    own bookkeeping (``ITK_original_direction`` and the like)."""
    return {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_")}


#: NIfTI-1 / NIfTI-2 header fields: (sizeof_hdr, dims offset and type, datatype offset,
#: vox_offset offset and type, scl_slope offset and type).
_NIFTI = {348: (40, "i2", 70, 108, "f4", 112, "f4"), 540: (16, "i8", 12, 168, "i8", 176, "f8")}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _restore_nonfinite(path: Path, array: np.ndarray) -> np.ndarray:
    """Put back the NaN and infinite voxels of a float NIfTI file, which SimpleITK's reader turns into 0.

    Lossless coding promises the file's stored values; so does :func:`read`. The voxels are
    read from the file itself (NIfTI-1 or -2, either byte order); anything unexpected leaves
    the array as SimpleITK gave it.
    """
    import gzip

    try:
        with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return array
    for order in "<>":
        size = int(np.frombuffer(raw[:4], dtype=order + "i4")[0]) if len(raw) >= 4 else 0
        if size in _NIFTI:
            break
    else:
        return array
    dims_at, dims_t, type_at, off_at, off_t, slope_at, slope_t = _NIFTI[size]
    dims = np.frombuffer(raw[dims_at : dims_at + 8 * np.dtype(dims_t).itemsize], dtype=order + dims_t)
    code = int(np.frombuffer(raw[type_at : type_at + 2], dtype=order + "i2")[0])
    offset = int(np.frombuffer(raw[off_at : off_at + np.dtype(off_t).itemsize], dtype=order + off_t)[0])
    slope = float(np.frombuffer(raw[slope_at : slope_at + np.dtype(slope_t).itemsize], dtype=order + slope_t)[0])
    if code not in _NIFTI_FLOATS or slope not in (0.0, 1.0) or int(np.prod(dims[1 : 1 + dims[0]])) != array.size:
        return array
    stored = np.frombuffer(raw, dtype=order + _NIFTI_FLOATS[code], count=array.size, offset=offset)
    stored = stored.reshape(array.shape)  # x fastest in the file, as in (z, y, x)
    bad = ~np.isfinite(stored)
    if not bad.any():
        return array
    array = array.copy()
    array[bad] = stored[bad]
    return array


def _read_dicom_series(sitk, folder: Path):
    # GDCM warns on stderr for a folder without DICOM files; the error below says it in one line.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not ids:
        raise VolumeIOError(f"{folder}: no DICOM series found in this folder")
    if len(ids) > 1:
        raise VolumeIOError(f"{folder}: {len(ids)} DICOM series found; give a folder holding one")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_slice_positions(reader, image, folder)
    for key in reader.GetMetaDataKeys(0):
        image.SetMetaData(key, reader.GetMetaData(0, key))
    return image


def _check_slice_positions(reader, image, folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal (a missing slice,
    mixed acquisitions): one z spacing would misplace every slice after the gap."""
    n = image.GetDepth()
    tag = "0020|0032"  # Image Position (Patient)
    if n < 3 or not all(reader.HasMetaDataKey(i, tag) for i in range(n)):
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, tag).split("\\")] for i in range(n)])
    except ValueError:
        raise VolumeIOError(f"{folder}: a slice's Image Position (Patient) is not three numbers") from None
    if positions.shape != (n, 3):
        raise VolumeIOError(f"{folder}: a slice's Image Position (Patient) is not three numbers")
    normal = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    gaps = np.diff(positions @ normal)
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if abs(gaps[worst] - typical) > max(1e-3, 0.01 * abs(typical)):
        raise VolumeIOError(
            f"{folder}: slices are not evenly spaced ({gaps[worst]:.4g} mm between slices {worst + 1} and "
            f"{worst + 2}, {typical:.4g} mm elsewhere): a slice may be missing; give a complete series"
        )


def write(volume: Volume | np.ndarray, path: str | os.PathLike, *, compress: bool | None = None) -> None:
    """Write a volume to a file, atomically (a temporary file in the same folder, then rename).

    Args:
        volume: The volume (or a bare array, with unit geometry).
        path: Destination; its ending selects the format (see :data:`VOLUME_SUFFIXES`).
        compress: Ask the format for its own compression; default: only for ``.nii.gz``.

    Raises:
        InvalidInputError: The file ending names no supported format.
        VolumeIOError: The file cannot be written.
    """
    sitk = _sitk()
    vol = as_volume(volume)
    path = Path(path)
    suffix = volume_suffix(path.name)
    if suffix in DETACHED_SUFFIXES:
        _write_image(sitk, vol, path, compress=bool(compress))
        return
    from .atomic import write_atomic

    squeeze = suffix == ".nii.gz" if compress is None else compress
    write_atomic(path, lambda tmp: _write_image(sitk, vol, tmp, compress=squeeze), force=True, suffix=suffix)


def _write_image(sitk, vol: Volume, path: Path, *, compress: bool) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    try:
        image.SetSpacing(vol.spacing)
        image.SetOrigin(vol.origin)
        image.SetDirection(vol.direction)
        for key, value in vol.metadata.items():
            # Empty values say nothing, and MetaImage warns about each one on stderr.
            if isinstance(value, str) and value and not key.startswith("ITK_"):
                image.SetMetaData(key, value)
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError as exc:
        raise VolumeIOError(f"cannot write {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK's messages start with a source location; the useful text is last.
    return lines[-1] if lines else type(exc).__name__
