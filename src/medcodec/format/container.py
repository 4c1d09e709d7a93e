"""The medcodec stream container: header, chunks, checksums (see docs/FORMAT.md).

This module knows bytes only: no torch, no entropy coding. ``write_stream``
assembles a header and chunks; ``read_stream`` validates everything a decoder
relies on before anything is allocated from what the header claims.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import CorruptStreamError, TruncatedStreamError, UnsupportedVersionError
from ..volume import SUPPORTED_DTYPES, geometry_problem

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "PALETTE_VERSION",
    "READ_MAJORS",
    "FLAG_INTEGER_VALUED",
    "FLAG_PALETTE",
    "FLAG_TRANSFORM",
    "TRANSFORM_VERSION",
    "PRIOR_VERSION",
    "REGIONAL_VERSION",
    "FLAG_REGIONAL",
    "Header",
    "Chunk",
    "StreamInfo",
    "write_stream",
    "read_header",
    "read_stream",
    "MODES",
]

#: File name ending of a stream.
STREAM_SUFFIX = ".mcz"
MAGIC = b"\x89MCZ\r\n\x1a\n"
FORMAT_VERSION = (2, 0)
#: The version of streams whose tiles use a palette (path 4): major version 3 adds only that.
PALETTE_VERSION = (3, 0)
#: The version of streams whose tiles may use the transform coder (path 5): major version 4 adds only that.
TRANSFORM_VERSION = (4, 0)
#: Transform streams whose frequency tables may refer to a table prior (named in the model fields).
PRIOR_VERSION = (4, 1)
#: Streams whose predictive sections may give regions of a level weights of their own: major
#: version 5 adds only that.
REGIONAL_VERSION = (5, 0)
#: Major versions this decoder reads: 1 (the learned paths only), 2 (adds the predictive path),
#: 3 (the palette path), 4 (the transform path) and 5 (regional predictive weights).
READ_MAJORS = (1, 2, 3, 4, 5)
MODES = ("lossy", "near-lossless", "lossless")
#: Header flag: a float volume whose values are all integers, coded with integer arithmetic.
FLAG_INTEGER_VALUED = 1
#: flags bit 1 (format 3.0): a lossless float stream whose tiles hold a palette and its indices.
FLAG_PALETTE = 2
#: flags bit 2 (format 4.0): a lossy integer stream whose tiles may be coded by the transform coder.
FLAG_TRANSFORM = 4
#: flags bit 3 (format 5.0): the predictive sections are format 5.0's, with weights per region.
FLAG_REGIONAL = 8
#: Largest volume a stream may describe (voxels); guards allocations a header could ask for.
MAX_VOXELS = 1 << 36
#: Largest nominal tile (voxels): the encoder's 64 x 256 x 256.
MAX_TILE_VOXELS = 1 << 22

_HEADER = struct.Struct("<BBBB3I3d3d9ddddI3II")
_PRELUDE = struct.Struct("<HHI")
_CHUNK_HEAD = struct.Struct("<4sQ")


@dataclass
class Header:
    """Fixed header fields of a stream (the field table is in docs/FORMAT.md)."""

    dtype: str
    mode: str
    quality: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    max_error: float
    lo: float
    hi: float
    gain_num: int
    tile: tuple[int, int, int]
    n_tiles: int
    model_name: str
    model_sha256: bytes
    voxel_sha256: bytes
    flags: int = 0

    def pack(self) -> bytes:
        name = self.model_name.encode("ascii")
        fixed = _HEADER.pack(
            _dtype_code(self.dtype),
            MODES.index(self.mode),
            self.quality,
            self.flags,
            *self.shape,
            *self.spacing,
            *self.origin,
            *self.direction,
            self.max_error,
            self.lo,
            self.hi,
            self.gain_num,
            *self.tile,
            self.n_tiles,
        )
        return fixed + struct.pack("<B", len(name)) + name + self.model_sha256 + self.voxel_sha256

    @classmethod
    def unpack(cls, body: bytes) -> Header:
        if len(body) < _HEADER.size + 1:
            raise CorruptStreamError("header is too short")
        f = _HEADER.unpack_from(body)
        (n,) = struct.unpack_from("<B", body, _HEADER.size)
        rest = body[_HEADER.size + 1 :]
        if len(rest) != n + 64:
            raise CorruptStreamError("header length does not match its model name")
        dtype_code, mode, quality, flags = f[0:4]
        if (
            dtype_code >= len(SUPPORTED_DTYPES)
            or mode >= len(MODES)
            or flags & ~(FLAG_INTEGER_VALUED | FLAG_PALETTE | FLAG_TRANSFORM | FLAG_REGIONAL)
        ):
            raise CorruptStreamError("header has an unknown dtype, mode or reserved flag")
        try:
            name = rest[:n].decode("ascii")
        except UnicodeDecodeError:
            raise CorruptStreamError("model name is not ASCII") from None
        h = cls(
            dtype=str(SUPPORTED_DTYPES[dtype_code]),
            mode=MODES[mode],
            quality=quality,
            shape=tuple(f[4:7]),
            spacing=tuple(f[7:10]),
            origin=tuple(f[10:13]),
            direction=tuple(f[13:22]),
            max_error=f[22],
            lo=f[23],
            hi=f[24],
            gain_num=f[25],
            tile=tuple(f[26:29]),
            n_tiles=f[29],
            model_name=name,
            model_sha256=rest[n : n + 32],
            voxel_sha256=rest[n + 32 :],
            flags=flags,
        )
        h.validate()
        return h

    def validate(self) -> None:
        """Reject headers whose fields are inconsistent (a decoder trusts nothing else)."""
        if min(self.shape) < 1 or min(self.tile) < 1 or int(np.prod(self.shape, dtype=np.float64)) > MAX_VOXELS:
            raise CorruptStreamError(f"header describes an impossible shape {self.shape} or tile {self.tile}")
        if int(np.prod(self.tile, dtype=np.float64)) > MAX_TILE_VOXELS:
            # A decoder's memory is counted in tiles: one declared tile may not ask for gigabytes.
            raise CorruptStreamError(f"header tile {self.tile} exceeds {MAX_TILE_VOXELS} voxels")
        expected = int(np.prod([-(-s // t) for s, t in zip(self.shape, self.tile)], dtype=np.float64))
        if expected != self.n_tiles:
            raise CorruptStreamError("header tile count does not match its shape and tile size")
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo <= self.hi):
            raise CorruptStreamError("header intensity range is invalid")
        if not (np.isfinite(self.max_error) and self.max_error >= 0) or self.gain_num < 1 or self.quality > 100:
            raise CorruptStreamError("header bound, gain or quality is invalid")
        if (self.mode == "near-lossless" and self.max_error == 0) or (self.mode == "lossless" and self.max_error):
            raise CorruptStreamError("header bound does not match its mode")
        integer = np.dtype(self.dtype).kind != "f" or self.flags & FLAG_INTEGER_VALUED
        if integer and (self.lo != int(self.lo) or self.hi != int(self.hi) or max(abs(self.lo), abs(self.hi)) > 2**32):
            raise CorruptStreamError("header intensity range is not integer for an integer volume")
        if self.flags & FLAG_INTEGER_VALUED and np.dtype(self.dtype).kind != "f":
            raise CorruptStreamError("header flags a float property on an integer volume")
        if self.flags & FLAG_PALETTE and (
            np.dtype(self.dtype).kind != "f"
            or self.flags & FLAG_INTEGER_VALUED
            or self.mode != "lossless"
            or self.model_name
        ):
            raise CorruptStreamError("header flags a palette on a stream that is not lossless fractional floats")
        if self.flags & FLAG_TRANSFORM and (not integer or self.mode != "lossy"):
            raise CorruptStreamError("header flags the transform coder on a stream that is not lossy integers")
        if self.flags & FLAG_REGIONAL and self.flags & FLAG_TRANSFORM:
            raise CorruptStreamError("header flags format 5.0 predictive sections on a transform stream")
        dtype = np.dtype(self.dtype)
        if dtype.kind in "iu" and not np.iinfo(dtype).min <= self.lo <= self.hi <= np.iinfo(dtype).max:
            # Binds the dtype to the values: an int16 stream relabelled uint16 would decode -30 as 65506.
            raise CorruptStreamError(f"header intensity range {self.lo:g}..{self.hi:g} does not fit its dtype {dtype}")
        problem = geometry_problem(self.spacing, self.origin, self.direction)
        if problem:
            raise CorruptStreamError(f"header geometry is invalid: {problem}")


@dataclass
class Chunk:
    """A chunk: four-letter type and payload. A lower-case first letter marks it ancillary (skippable)."""

    kind: bytes
    payload: bytes


@dataclass
class StreamInfo:
    """What :func:`medcodec.info` reports about a stream, read from its header alone."""

    format_version: str
    shape: tuple[int, int, int]
    dtype: str
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    mode: str
    max_error: float | None
    quality: int | None
    model_name: str
    model_sha256: str
    tile_shape: tuple[int, int, int]
    n_tiles: int
    compressed_bytes: int
    raw_bytes: int
    metadata_keys: list[str] | None = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Compression ratio: raw voxel bytes / stream bytes."""
        return self.raw_bytes / max(1, self.compressed_bytes)

    @property
    def bits_per_voxel(self) -> float:
        return 8.0 * self.compressed_bytes / max(1, int(np.prod(self.shape)))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(ratio=self.ratio, bits_per_voxel=self.bits_per_voxel)
        return d


def _dtype_code(dtype: str) -> int:
    return [str(d) for d in SUPPORTED_DTYPES].index(str(np.dtype(dtype)))


def write_stream(header: Header, chunks: list[Chunk]) -> bytes:
    """Serialize a header and chunks, each with its CRC-32, followed by the end chunk."""
    return b"".join([header_block(header), *(chunk_bytes(c) for c in [*chunks, END])])


#: The end chunk.
END = Chunk(b"MEND", b"")


def header_block(header: Header) -> bytes:
    """Magic number, prelude, header body and header CRC: the stream's first bytes.

    Its length depends only on the model name's length, so a writer can reserve it first and
    fill it in once the voxel checksum is known.
    """
    body = header.pack()
    # The lowest version that describes the stream, so that decoders of 2.x read all they can.
    if header.flags & FLAG_REGIONAL:
        version = REGIONAL_VERSION
    elif header.flags & FLAG_TRANSFORM:
        version = PRIOR_VERSION if header.model_name else TRANSFORM_VERSION
    else:
        version = PALETTE_VERSION if header.flags & FLAG_PALETTE else FORMAT_VERSION
    prelude = _PRELUDE.pack(*version, len(body)) + body
    return MAGIC + prelude + struct.pack("<I", zlib.crc32(prelude))


def chunk_bytes(c: Chunk) -> bytes:
    """One chunk as stored: head, payload, CRC-32."""
    head = _CHUNK_HEAD.pack(c.kind, len(c.payload))
    return head + c.payload + struct.pack("<I", zlib.crc32(c.payload, zlib.crc32(head)))


def scan_stream(f) -> tuple[Header, list[tuple[bytes, int, int]]]:
    """Check a stream in a binary file chunk by chunk, keeping no payload: the header and
    each chunk's (type, payload offset, length), in order, the end chunk left out."""
    f.seek(0)
    first = f.read(65536)
    header, pos, _ = read_header(first)
    f.seek(0, 2)
    size = f.tell()
    chunks = []
    while True:
        f.seek(pos)
        head = f.read(_CHUNK_HEAD.size)
        if len(head) < _CHUNK_HEAD.size or size < pos + _CHUNK_HEAD.size + 4:
            raise TruncatedStreamError("stream ends before its end chunk")
        kind, length = _CHUNK_HEAD.unpack(head)
        start = pos + _CHUNK_HEAD.size
        if length > size - start - 4:
            raise TruncatedStreamError(f"chunk {_name(kind)} runs past the end of the stream")
        crc = zlib.crc32(head)
        for at in range(0, length, 1 << 24):  # in pieces: a chunk may be large
            crc = zlib.crc32(f.read(min(1 << 24, length - at)), crc)
        if struct.unpack("<I", f.read(4))[0] != crc:
            raise CorruptStreamError(f"checksum mismatch in chunk {_name(kind)} at byte {pos}")
        pos = start + length + 4
        if kind == b"MEND":
            if length:
                raise CorruptStreamError("end chunk has a payload")
            break
        if not (kind.isascii() and kind.isalpha()):
            raise CorruptStreamError(f"invalid chunk type {_name(kind)}")
        chunks.append((bytes(kind), start, length))
    if pos != size:
        raise CorruptStreamError("bytes after the end chunk")
    return header, chunks


def read_header(data: bytes) -> tuple[Header, int, tuple[int, int]]:
    """Parse and check the magic, version and header.

    Returns:
        The header, the offset after it, and the stream's (major, minor) format version.
    """
    data = memoryview(data)
    if len(data) < len(MAGIC):
        raise TruncatedStreamError("stream is shorter than its magic number")
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise CorruptStreamError("not a medcodec stream (bad magic number)")
    pos = len(MAGIC)
    if len(data) < pos + _PRELUDE.size:
        raise TruncatedStreamError("stream ends inside its header")
    major, minor, size = _PRELUDE.unpack_from(data, pos)
    end = pos + _PRELUDE.size + size
    if len(data) < end + 4:
        raise TruncatedStreamError("stream ends inside its header")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[pos:end]) != crc:
        raise CorruptStreamError("header checksum mismatch")
    if major not in READ_MAJORS:
        raise UnsupportedVersionError(
            f"stream format version {major}.{minor} is not supported"
            f" (this decoder reads {', '.join(f'{m}.x' for m in READ_MAJORS)})"
        )
    header = Header.unpack(bytes(data[pos + _PRELUDE.size : end]))
    if header.flags & FLAG_PALETTE and major < PALETTE_VERSION[0]:
        raise CorruptStreamError(f"a format {major}.{minor} header sets flags bit 1, which format 3.0 defines")
    if header.flags & FLAG_TRANSFORM and major < TRANSFORM_VERSION[0]:
        raise CorruptStreamError(f"a format {major}.{minor} header sets flags bit 2, which format 4.0 defines")
    if header.flags & FLAG_REGIONAL and major < REGIONAL_VERSION[0]:
        raise CorruptStreamError(f"a format {major}.{minor} header sets flags bit 3, which format 5.0 defines")
    if header.flags & FLAG_TRANSFORM and header.model_name and (major, minor) < PRIOR_VERSION:
        raise CorruptStreamError(
            f"a format {major}.{minor} transform stream names a table prior, which format 4.1 defines"
        )
    return header, end + 4, (major, minor)


def _name(kind: bytes) -> str:
    """A chunk type as a person reads it: TILE, or its bytes in hex when they are not letters."""
    return kind.decode("ascii") if kind.isascii() and kind.isalpha() else "0x" + kind.hex()


def read_stream(data: bytes) -> tuple[Header, list[Chunk]]:
    """Parse a whole stream, checking every checksum; returns the header and its known chunks."""
    header, index = scan_stream(io.BytesIO(data))
    return header, [Chunk(kind, bytes(data[at : at + n])) for kind, at, n in index]
