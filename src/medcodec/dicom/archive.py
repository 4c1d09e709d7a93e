"""The DICOM archive (``.mcd``): its byte layout, its index and the restore of its files.

This module knows bytes only, no pydicom (docs/DICOM.md specifies the layout): an archive
holds, per series, one medcodec stream of the slices' pixel values, and, compressed together,
every file's other bytes; files that are not coded as images are stored whole. Restoring a
lossless archive needs nothing but this module and the codec; :mod:`medcodec.dicom.study` reads
DICOM files to make archives and rewrites the files of a lossy series.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import numpy as np
import zstandard

from ..coding.entropy import unzstd
from ..errors import ChecksumError, CorruptStreamError, InvalidInputError, TruncatedStreamError, UnsupportedVersionError
from ..format.container import read_header

__all__ = [
    "ARCHIVE_MAGIC",
    "ARCHIVE_VERSION",
    "ARCHIVE_SUFFIX",
    "ArchiveInfo",
    "SeriesInfo",
    "RestoredFile",
    "Series",
    "Entry",
    "is_archive",
    "write_archive",
    "read_archive",
    "archive_info",
    "restore_files",
    "check_path",
]

ARCHIVE_MAGIC = b"\x89MCD\r\n\x1a\n"
ARCHIVE_VERSION = (1, 0)
#: Extension of DICOM archives (a plain stream is ``.mcz``).
ARCHIVE_SUFFIX = ".mcd"
#: Zstandard level of the HEAD and FILE sections.
ZSTD_LEVEL = 19
#: Pixel sample types an archive codes, by (BitsAllocated, PixelRepresentation).
SAMPLE_TYPES = {(8, 0): "uint8", (8, 1): "int8", (16, 0): "uint16", (16, 1): "int16"}
#: Largest index (JSON bytes) and sum of file sizes a reader accepts.
INDEX_LIMIT, FILES_LIMIT = 256 << 20, 1 << 40
_PRELUDE = struct.Struct("<HHI")
_SECTION_HEAD = struct.Struct("<4sQ")
_KINDS = (b"INDX", b"HEAD", b"FILE", b"VOLU", b"AEND")


@dataclass
class Series:
    """One series as the index records it: its slices are one medcodec stream (z, rows, columns)."""

    uid: str
    rows: int
    columns: int
    slices: int
    dtype: str
    mode: str = "lossless"
    bits_stored: int = 16
    modality: str = ""
    description: str = ""

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * np.dtype(self.dtype).itemsize


@dataclass
class Entry:
    """One file: whole in the FILE section (``series`` is None, ``reason`` says why), or an image
    whose pixel bytes (``frame_bytes`` of its series, from ``offset``) are slice ``slice`` of a series."""

    path: str
    size: int
    sha256: str
    series: int | None = None
    slice: int = 0
    offset: int = 0
    reason: str = ""


@dataclass
class SeriesInfo:
    """What :func:`archive_info` reports of one series."""

    uid: str
    modality: str
    description: str
    files: int
    rows: int
    columns: int
    dtype: str
    mode: str
    file_bytes: int
    stream_bytes: int


@dataclass
class ArchiveInfo:
    """What :func:`archive_info` reports of an archive, from its index alone (no pixel decoding)."""

    format_version: str
    files: int
    images: int
    stored: int
    mode: str
    file_bytes: int
    archive_bytes: int
    header_bytes: int
    stored_bytes: int
    series: list[SeriesInfo] = field(default_factory=list)
    stored_files: list[dict] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Sum of the files' sizes / archive size."""
        return self.file_bytes / max(1, self.archive_bytes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class RestoredFile:
    """A file as restored: its bytes, and for a lossy series, which series (the bytes then hold the
    decoded pixels, and the file still carries its original attributes)."""

    path: str
    data: bytes
    series: Series | None = None
    ratio: float = 0.0


def is_archive(data: bytes) -> bool:
    """Whether ``data`` starts with the archive's magic number (a plain stream does not)."""
    return bytes(data[: len(ARCHIVE_MAGIC)]) == ARCHIVE_MAGIC


def _section(kind: bytes, payload: bytes) -> bytes:
    head = _SECTION_HEAD.pack(kind, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data) if data else b""


def write_archive(
    series: list[Series], entries: list[Entry], heads: bytes, stored: bytes, streams: list[bytes]
) -> bytes:
    """Assemble an archive.

    Args:
        series: The series, in stream order.
        entries: Every file; ``heads`` and ``stored`` concatenate their bytes in this order.
        heads: Each image file's bytes without its pixel bytes.
        stored: Each stored file whole.
        streams: One medcodec stream per series.
    """
    index = {"series": [asdict(s) for s in series], "files": [_entry_fields(e) for e in entries]}
    text = json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    parts = [_section(b"INDX", _zstd(text)), _section(b"HEAD", _zstd(heads)), _section(b"FILE", _zstd(stored))]
    parts += [_section(b"VOLU", s) for s in streams]
    prelude = ARCHIVE_MAGIC + _PRELUDE.pack(*ARCHIVE_VERSION, 0)
    return b"".join([prelude, *parts, _section(b"AEND", b"")])


def _entry_fields(e: Entry) -> dict:
    """An entry as the index stores it: an image names its series, slice and pixel offset, a
    stored file the reason it is stored whole."""
    fields = {"path": e.path, "size": e.size, "sha256": e.sha256}
    if e.series is not None:
        return fields | {"series": e.series, "slice": e.slice, "offset": e.offset}
    return fields | ({"reason": e.reason} if e.reason else {})


@dataclass
class _Parsed:
    version: tuple[int, int]
    series: list[Series]
    entries: list[Entry]
    sections: dict[bytes, list[memoryview]]
    size: int


def _sections(data: memoryview) -> tuple[tuple[int, int], dict[bytes, list[memoryview]]]:
    if len(data) < len(ARCHIVE_MAGIC) + _PRELUDE.size:
        raise TruncatedStreamError("archive is shorter than its magic number and version")
    if not is_archive(data):
        raise CorruptStreamError("not a medcodec DICOM archive (bad magic number)")
    major, minor, flags = _PRELUDE.unpack_from(data, len(ARCHIVE_MAGIC))
    if major != ARCHIVE_VERSION[0]:
        raise UnsupportedVersionError(f"archive format version {major}.{minor} is not supported (this reader: 1.x)")
    if flags:
        raise CorruptStreamError("archive sets reserved flags")
    pos, order, found = len(ARCHIVE_MAGIC) + _PRELUDE.size, [], {k: [] for k in _KINDS}
    while True:
        if len(data) < pos + _SECTION_HEAD.size + 4:
            raise TruncatedStreamError("archive ends before its end section")
        kind, length = _SECTION_HEAD.unpack_from(data, pos)
        start = pos + _SECTION_HEAD.size
        if length > len(data) - start - 4:
            raise TruncatedStreamError(f"section at byte {pos} runs past the end of the archive")
        payload = data[start : start + length]
        (crc,) = struct.unpack_from("<I", data, start + length)
        if zlib.crc32(payload, zlib.crc32(data[pos:start])) != crc:
            raise CorruptStreamError(f"checksum mismatch in the archive section at byte {pos}")
        if kind not in found:
            raise CorruptStreamError(f"unknown archive section {kind!r} at byte {pos}")
        found[kind].append(payload)
        order.append(kind)
        pos = start + length + 4
        if kind == b"AEND":
            break
    expected = [b"INDX", b"HEAD", b"FILE", *[b"VOLU"] * len(found[b"VOLU"]), b"AEND"]
    if order != expected or len(found[b"AEND"][0]):
        raise CorruptStreamError("archive sections are missing or out of order")
    if pos != len(data):
        raise CorruptStreamError("bytes after the archive's end section")
    return (major, minor), found


def check_path(path: object) -> str:
    """A relative path that stays inside the output folder (an archive may be hostile)."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise CorruptStreamError(f"archive names an invalid file path {path!r}")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "/".join(parts) != path:
        raise CorruptStreamError(f"archive names a path outside its folder: {path!r}")
    return path


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CorruptStreamError(f"archive index: {what} is invalid ({value!r})")
    return value


def _parse_index(payload: memoryview) -> tuple[list[Series], list[Entry]]:
    try:
        index = json.loads(unzstd(bytes(payload), INDEX_LIMIT).decode("utf-8"))
        series = [Series(**s) for s in index["series"]]
        entries = [Entry(**e) for e in index["files"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptStreamError(f"archive index is malformed: {exc}") from None
    for s in series:
        for name in ("rows", "columns", "slices"):
            _int(getattr(s, name), 1, 1 << 20, f"series {name}")
        _int(s.bits_stored, 1, 16, "series bits_stored")
        if s.dtype not in SAMPLE_TYPES.values() or s.mode not in ("lossless", "near-lossless", "lossy"):
            raise CorruptStreamError(f"archive index: series sample type {s.dtype!r} or mode {s.mode!r} is invalid")
        if not all(isinstance(getattr(s, k), str) for k in ("uid", "modality", "description")):
            raise CorruptStreamError("archive index: a series' text field is not a string")
    seen_paths: set[str] = set()
    seen_slices: set[tuple[int, int]] = set()
    total = 0
    for e in entries:
        check_path(e.path)
        if e.path in seen_paths:
            raise CorruptStreamError(f"archive names {e.path!r} twice")
        seen_paths.add(e.path)
        total += _int(e.size, 0, FILES_LIMIT, "file size")
        if not isinstance(e.sha256, str) or len(e.sha256) != 64 or not isinstance(e.reason, str):
            raise CorruptStreamError(f"archive index: the checksum of {e.path!r} is invalid")
        if e.series is not None:
            s = series[_int(e.series, 0, len(series) - 1, "file series")]
            _int(e.slice, 0, s.slices - 1, "file slice")
            _int(e.offset, 0, e.size - s.frame_bytes, "pixel offset")
            if (e.series, e.slice) in seen_slices:
                raise CorruptStreamError(f"archive index gives slice {e.slice} of series {e.series} twice")
            seen_slices.add((e.series, e.slice))
    if len(seen_slices) != sum(s.slices for s in series) or total > FILES_LIMIT:
        raise CorruptStreamError("archive index: a series lacks a file for one of its slices")
    return series, entries


def read_archive(data: bytes) -> _Parsed:
    """Check an archive's framing, every section's CRC-32 and its index.

    Raises:
        TruncatedStreamError, CorruptStreamError, UnsupportedVersionError: The archive is damaged.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"expected the archive's bytes, got {type(data).__name__}")
    view = memoryview(data)
    version, sections = _sections(view)
    series, entries = _parse_index(sections[b"INDX"][0])
    if len(sections[b"VOLU"]) != len(series):
        raise CorruptStreamError(f"archive holds {len(sections[b'VOLU'])} series streams, its index {len(series)}")
    return _Parsed(version, series, entries, sections, len(view))


def archive_info(data: bytes) -> ArchiveInfo:
    """Describe an archive from its index, without decoding any pixel.

    Raises:
        TruncatedStreamError, CorruptStreamError, UnsupportedVersionError: The archive is damaged.
    """
    p = read_archive(data)
    images = [e for e in p.entries if e.series is not None]
    stored = [e for e in p.entries if e.series is None]
    per_series = [
        SeriesInfo(
            s.uid,
            s.modality,
            s.description,
            s.slices,
            s.rows,
            s.columns,
            s.dtype,
            s.mode,
            sum(e.size for e in images if e.series == i),
            len(p.sections[b"VOLU"][i]),
        )
        for i, s in enumerate(p.series)
    ]
    modes = {s.mode for s in p.series}
    return ArchiveInfo(
        format_version=f"{p.version[0]}.{p.version[1]}",
        files=len(p.entries),
        images=len(images),
        stored=len(stored),
        mode=next(iter(modes)) if len(modes) == 1 else "mixed" if modes else "lossless",
        file_bytes=sum(e.size for e in p.entries),
        archive_bytes=p.size,
        header_bytes=len(p.sections[b"HEAD"][0]),
        stored_bytes=len(p.sections[b"FILE"][0]),
        series=per_series,
        stored_files=[
            {"path": e.path, "size": e.size, "reason": e.reason} for e in sorted(stored, key=lambda e: e.path)
        ],
    )


def _value_range(s: Series) -> tuple[int, int]:
    """The values BitsStored allows, which a lossy decode is clipped to."""
    if np.dtype(s.dtype).kind == "i":
        return -(1 << (s.bits_stored - 1)), (1 << (s.bits_stored - 1)) - 1
    return 0, (1 << s.bits_stored) - 1


def restore_files(data: bytes, *, model: str | None = None) -> Iterator[RestoredFile]:
    """Every file of an archive, series by series, then the stored files.

    A file of a lossless series, and every stored file, is checked against its SHA-256.
    A file of a lossy series comes back with its decoded pixels in place of the original's
    (its series is set on the result): :mod:`medcodec.dicom.study` rewrites its attributes.

    Raises:
        TruncatedStreamError, CorruptStreamError, UnsupportedVersionError: The archive is damaged.
        ChecksumError: A restored file differs from the one packed.
    """
    from ..codec import decompress

    p = read_archive(data)
    images = [e for e in p.entries if e.series is not None]
    stored = [e for e in p.entries if e.series is None]
    heads = unzstd(bytes(p.sections[b"HEAD"][0]), FILES_LIMIT)
    files = unzstd(bytes(p.sections[b"FILE"][0]), FILES_LIMIT)
    head_sizes = [e.size - p.series[e.series].frame_bytes for e in images]  # type: ignore[index]
    if len(heads) != sum(head_sizes) or len(files) != sum(e.size for e in stored):
        raise CorruptStreamError("archive header or stored-file section does not hold the sizes its index gives")
    at, head_at = 0, {}
    for e, n in zip(images, head_sizes):
        head_at[e.path] = (at, n)
        at += n
    for i, s in enumerate(p.series):
        stream = bytes(p.sections[b"VOLU"][i])
        if read_header(stream)[0].mode != s.mode:  # the mode decides whether files are checked whole
            raise CorruptStreamError(f"series {i}: its stream's mode differs from the index's {s.mode!r}")
        vol = decompress(stream, model=model)
        if vol.shape != (s.slices, s.rows, s.columns) or str(vol.dtype) != s.dtype:
            raise CorruptStreamError(f"series {i}: its stream holds {vol.shape} {vol.dtype}, its index says otherwise")
        pixels = vol.array
        lossless = s.mode == "lossless"
        if not lossless:
            pixels = np.clip(pixels, *_value_range(s)).astype(s.dtype)
        ratio = s.slices * s.frame_bytes / max(1, len(p.sections[b"VOLU"][i]))  # pixel bytes / coded bytes
        for e in (e for e in images if e.series == i):
            start, n = head_at[e.path]
            head = heads[start : start + n]
            frame = pixels[e.slice].astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
            out = head[: e.offset] + frame + head[e.offset :]
            if lossless:
                _check(e, out)
            yield RestoredFile(e.path, out, None if lossless else s, ratio)
    at = 0
    for e in stored:
        out = files[at : at + e.size]
        at += e.size
        _check(e, out)
        yield RestoredFile(e.path, out)


def _check(e: Entry, out: bytes) -> None:
    if hashlib.sha256(out).hexdigest() != e.sha256:
        raise ChecksumError(f"{e.path}: the restored file's SHA-256 differs from the packed file's")
