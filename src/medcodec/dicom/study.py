"""Reading DICOM files into an archive, and writing the files of a lossy series (pydicom).

The layout of the archive itself is :mod:`medcodec.dicom.archive`; :mod:`medcodec.dicom` documents the API.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError, MissingExtraError, OutputExistsError, VolumeIOError
from ..files.atomic import write_atomic
from ..volume import Volume
from .archive import (
    ARCHIVE_SUFFIX,
    SAMPLE_TYPES,
    ArchiveInfo,
    Entry,
    Series,
    archive_info,
    check_path,
    is_archive,
    restore_files,
    write_archive,
)

__all__ = ["pack", "pack_files", "unpack", "restore", "info", "is_archive", "ARCHIVE_SUFFIX", "LOSSY_METHOD"]

#: Transfer syntaxes whose pixels are coded: implicit and explicit VR little endian.
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
#: Lossy Image Compression Method (0028,2114) of files written from a lossy archive.
LOSSY_METHOD = "MEDCODEC"
_PIXEL_DATA = 0x7FE00010


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise MissingExtraError("reading and writing DICOM needs pydicom: pip install medcodec[dicom]") from None
    return pydicom


@dataclass
class _Image:
    """An image file: where its pixel bytes start, and what its series and order come from."""

    path: str
    data: bytes
    offset: int
    key: tuple  # files with equal keys form one series
    bits_stored: int
    modality: str
    description: str
    position: float | None
    instance: int | None


def _read_image(path: str, data: bytes) -> _Image | str:
    """The image in a file, or why the file is stored whole."""
    pydicom = _pydicom()
    dicom_magic = data[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd files; they are stored whole
            ds = pydicom.dcmread(io.BytesIO(data))
            return _image_of(ds, path, data)
    except Exception:  # pydicom raises many kinds on damaged files; such a file is kept as it is
        return "damaged DICOM (truncated or malformed)" if dicom_magic else "not DICOM"


def _image_of(ds, path: str, data: bytes) -> _Image | str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if _PIXEL_DATA not in ds and _cut_short(ds, data):
        return "damaged DICOM (truncated)"
    if syntax not in UNCOMPRESSED:
        return f"transfer syntax {syntax or '(none)'}"
    if _PIXEL_DATA not in ds:
        return "no pixel data"
    elem = ds.get_item(_PIXEL_DATA)
    offset, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits, signed = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("PixelRepresentation", 0) or 0)
    bits_stored = int(ds.get("BitsStored", bits) or bits)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or str(ds.get("PhotometricInterpretation", "")).strip() not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        return "not monochrome"
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return "multi-frame"
    if (bits, signed) not in SAMPLE_TYPES or not 1 <= bits_stored <= bits or rows < 1 or columns < 1:
        return f"{bits} bits allocated, pixel representation {signed}"
    frame = rows * columns * bits // 8
    if offset is None or length is None or length == 0xFFFFFFFF or length < frame:
        return "pixel data shorter than rows x columns"
    # Bytes past the frame (a pad byte, trailing padding inside the value) stay with the header.
    if offset + length > len(data):
        return "damaged DICOM (truncated)"
    dtype = SAMPLE_TYPES[(bits, signed)]
    position = None
    try:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        iop = [float(v) for v in ds.ImageOrientationPatient]
        position = float(np.dot(ipp, np.cross(iop[:3], iop[3:6])))
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        instance = int(ds.get("InstanceNumber"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        instance = None
    key = (str(ds.get("SeriesInstanceUID", "")), rows, columns, dtype, bits_stored)
    return _Image(
        path,
        data,
        offset,
        key,
        bits_stored,
        str(ds.get("Modality", "")),
        str(ds.get("SeriesDescription", "")),
        position,
        instance,
    )


def _cut_short(ds, data: bytes) -> bool:
    """Whether the file ends inside an element (pydicom reads such a file without a word): its
    last element does not end where the file does."""
    if not len(ds):
        return True
    last = ds.get_item(max(ds.keys()))
    at, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    return at is not None and length is not None and length != 0xFFFFFFFF and at + length != len(data)


def _slice_order(images: list[_Image]) -> list[_Image]:
    """Slices along the normal when every one has a position, else by instance number; then by path."""
    if all(im.position is not None for im in images):
        return sorted(images, key=lambda im: (im.position, im.instance or 0, im.path))
    return sorted(images, key=lambda im: (im.instance is None, im.instance or 0, im.path))


def _pixels(image: _Image, dtype: str, *, lossless: bool) -> np.ndarray:
    rows, columns = image.key[1], image.key[2]
    little = np.dtype(dtype).newbyteorder("<")
    raw = np.frombuffer(image.data, dtype=little, count=rows * columns, offset=image.offset)
    raw = raw.astype(dtype).reshape(rows, columns)
    if lossless or image.bits_stored == 8 * np.dtype(dtype).itemsize:
        return raw  # the stored words as they are: bits above BitsStored included, so bytes come back exact
    # Lossy: the values BitsStored holds (bits above it are not part of the value).
    mask = (1 << image.bits_stored) - 1
    values = raw.astype(np.int64) & mask
    if np.dtype(dtype).kind == "i":
        sign = 1 << (image.bits_stored - 1)
        values = (values ^ sign) - sign
    return values.astype(dtype)


def pack_files(
    files: Iterable[tuple[str, bytes]],
    *,
    quality: int | None = None,
    max_error: float | None = None,
    model: str | None = None,
) -> bytes:
    """Pack files given as (relative path, bytes) pairs into one archive.

    Args:
        files: Each file's path (``/``-separated, relative) and content.
        quality, max_error: Code the pixels lossy or within ``max_error``; neither (the
            default) is lossless and restores every file byte for byte.
        model: Model for the codec (see :func:`medcodec.compress`).

    Returns:
        The archive (starts with :data:`medcodec.dicom.archive.ARCHIVE_MAGIC`).

    Raises:
        InvalidInputError: No file, a path that is not relative or given twice, no file is
            DICOM, or bad options.
        MissingExtraError: pydicom is not installed.
    """
    from ..codec import _check_options, compress
    from ..codec import info as stream_info

    _check_options(quality, max_error)
    # Pixels are integers: a bound below 1 keeps them exact, and the codec codes it as lossless.
    lossless = quality is None and math.floor(max_error or 0) == 0
    items = sorted(files, key=lambda f: f[0])
    if not items:
        raise InvalidInputError("no files to pack")
    for i, (name, data) in enumerate(items):
        try:
            check_path(name)
        except CorruptStreamError:
            raise InvalidInputError(f"file name {name!r} is not a relative path inside the study") from None
        if i and items[i - 1][0] == name:
            raise InvalidInputError(f"file {name!r} given twice")
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidInputError(f"file {name!r}: expected bytes, got {type(data).__name__}")
    images: dict[tuple, list[_Image]] = {}
    stored: list[tuple[str, bytes, str]] = []
    for name, data in items:
        found = _read_image(name, bytes(data))
        if isinstance(found, str):
            stored.append((name, bytes(data), found))
        else:
            images.setdefault(found.key, []).append(found)
    if not images and all(reason in ("not DICOM",) for _, _, reason in stored):
        raise InvalidInputError(f"none of the {len(items)} files is DICOM (a DICOM file has 'DICM' at byte 128)")

    series, entries, heads, streams = [], [], [], []
    for key, group in sorted(images.items(), key=lambda kv: min(im.path for im in kv[1])):
        group = _slice_order(group)
        dtype = key[3]
        volume = np.stack([_pixels(im, dtype, lossless=lossless) for im in group])
        stream = compress(Volume(volume), quality=quality, max_error=0 if lossless else max_error, model=model)
        frame = volume[0].nbytes
        s = Series(
            key[0],
            key[1],
            key[2],
            len(group),
            dtype,
            stream_info(stream).mode,
            key[4],
            group[0].modality,
            group[0].description,
        )
        for k, im in enumerate(group):
            entries.append(Entry(im.path, len(im.data), hashlib.sha256(im.data).hexdigest(), len(series), k, im.offset))
            heads.append(im.data[: im.offset] + im.data[im.offset + frame :])
        series.append(s)
        streams.append(stream)
    for name, data, reason in stored:
        entries.append(Entry(name, len(data), hashlib.sha256(data).hexdigest(), reason=reason))
    return write_archive(series, entries, b"".join(heads), b"".join(d for _, d, _ in stored), streams)


def _study_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, bytes]]:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise VolumeIOError(f"no such file or folder: {root}")
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.is_file())
            if not paths:
                raise InvalidInputError(f"{root}: the folder holds no files")
        else:
            paths, root = [root], root.parent
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise InvalidInputError("no files to pack")
        root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
        paths = [p.resolve() for p in paths]
    out = []
    for p in paths:
        try:
            out.append((p.relative_to(root).as_posix(), p.read_bytes()))
        except OSError as exc:
            raise VolumeIOError(f"cannot read {p}: {exc.strerror or exc}") from None
    return out


def pack(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    quality: int | None = None,
    max_error: float | None = None,
    model: str | None = None,
) -> bytes:
    """Pack a study into one archive: a folder (every file below it, at its relative path) or a
    list of files (paths relative to their common folder). Lossless unless ``quality`` or
    ``max_error`` is given; see :func:`pack_files`.

    Raises:
        VolumeIOError: The source does not exist or a file cannot be read.
        InvalidInputError: The folder is empty or holds no DICOM file, or bad options.
        MissingExtraError: pydicom is not installed.
    """
    return pack_files(_study_files(source), quality=quality, max_error=max_error, model=model)


def _lossy_file(data: bytes, series: Series, ratio: float) -> bytes:
    """A decoded image as a new DICOM file: the lossy attributes set, a new SOP Instance UID."""
    pydicom = _pydicom()
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(data))
    text = f"{ratio:.2f}"[:16]
    ratios, methods = [text], [LOSSY_METHOD]
    if ds.get("LossyImageCompression") == "01":  # coded lossy before: the standard lists every step
        ratios = [str(v) for v in _values(ds.get("LossyImageCompressionRatio"))] + ratios
        methods = [str(v) for v in _values(ds.get("LossyImageCompressionMethod"))] + methods
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    uid = generate_uid(entropy_srcs=["medcodec lossy", str(ds.get("SOPInstanceUID", "")), series.mode, text])
    ds.SOPInstanceUID = uid
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _values(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def restore(data: bytes, *, model: str | None = None) -> list[tuple[str, bytes]]:
    """Every file of an archive as (relative path, bytes), each checked, sorted by path.

    Raises:
        TruncatedStreamError, CorruptStreamError, UnsupportedVersionError: The archive is damaged.
        ChecksumError: A file of a lossless series or a stored file differs from the one packed.
        MissingExtraError: The archive is lossy and pydicom is not installed.
    """
    out = []
    for f in restore_files(data, model=model):
        out.append((f.path, f.data if f.series is None else _lossy_file(f.data, f.series, f.ratio)))
    return sorted(out)


def unpack(data: bytes, out_dir: str | os.PathLike, *, force: bool = False, model: str | None = None) -> list[Path]:
    """Restore every file of an archive under ``out_dir`` (created if missing), at its relative path.

    Every file is decoded and checked before the first is written; each is written atomically.

    Returns:
        The paths written.

    Raises:
        OutputExistsError: A file to write exists and ``force`` is false (nothing is written).
        TruncatedStreamError, CorruptStreamError, ChecksumError: The archive is damaged.
        VolumeIOError: A file cannot be written.
    """
    files = restore(data, model=model)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise VolumeIOError(f"output {root} is a file, not a folder")
    dests = [root.joinpath(*name.split("/")) for name, _ in files]
    for dest in dests:
        if dest.is_dir():
            raise VolumeIOError(f"cannot write {dest}: it is a folder")
        if dest.exists() and not force:
            raise OutputExistsError(f"{dest} exists; use --force to overwrite it")
    for dest, (_, content) in zip(dests, files):
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VolumeIOError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
        write_atomic(dest, _writer(content), force=force)
    return dests


def _writer(content: bytes):
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())

    return write


def info(data: bytes) -> ArchiveInfo:
    """Series, file counts and sizes of an archive, from its index (nothing is decoded)."""
    return archive_info(data)
