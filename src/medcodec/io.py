"""Reading and writing volume files through SimpleITK.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) for reading and writing, and a folder holding one DICOM
series for reading. Arrays are (z, y, x); spacing, origin and direction are in
SimpleITK's (x, y, z) LPS convention. Dtype and geometry round-trip exactly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, VolumeIOError
from .volume import Volume, as_volume

__all__ = ["read", "write", "WRITE_SUFFIXES"]

#: File name endings :func:`write` accepts.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


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
    metadata = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    return Volume(array, spacing, origin, direction, metadata)


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
    for key in reader.GetMetaDataKeys(0):
        image.SetMetaData(key, reader.GetMetaData(0, key))
    return image


def write(volume: Volume | np.ndarray, path: str | os.PathLike, *, compress: bool | None = None) -> None:
    """Write a volume to a file, atomically (a temporary file in the same folder, then rename).

    Args:
        volume: The volume (or a bare array, with unit geometry).
        path: Destination; its ending selects the format (see :data:`WRITE_SUFFIXES`).
        compress: Ask the format for its own compression; default: only for ``.nii.gz``.

    Raises:
        InvalidInputError: The file ending names no supported format.
        VolumeIOError: The file cannot be written.
    """
    sitk = _sitk()
    vol = as_volume(volume)
    path = Path(path)
    suffix = next((s for s in WRITE_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise InvalidInputError(f"cannot tell the format of {path.name!r}; use one of {', '.join(WRITE_SUFFIXES)}")
    if suffix in (".nhdr", ".mhd"):
        # Detached headers write a second data file beside them: no single atomic rename.
        _write_image(sitk, vol, path, compress=bool(compress))
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        _write_image(sitk, vol, Path(tmp), compress=suffix == ".nii.gz" if compress is None else compress)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_image(sitk, vol: Volume, path: Path, *, compress: bool) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    image.SetSpacing(vol.spacing)
    image.SetOrigin(vol.origin)
    image.SetDirection(vol.direction)
    for key, value in vol.metadata.items():
        if isinstance(value, str) and not key.startswith("ITK_"):
            image.SetMetaData(key, value)
    try:
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError as exc:
        raise VolumeIOError(f"cannot write {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK's messages start with a source location; the useful text is last.
    return lines[-1] if lines else type(exc).__name__
