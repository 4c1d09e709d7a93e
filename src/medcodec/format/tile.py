"""The layout of a tile chunk's payload: its head, its length-prefixed sections, its checksum.

Every tile chunk (docs/FORMAT.md, section 12) is ``TILE_HEAD`` (tile index, path, residual
levels, residual buckets, a reserved zero byte), then the path's sections, each a u32 length
and its bytes, then the SHA-256 of the tile's decoded voxels. The path says which coder
wrote the sections and how many there are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import CorruptStreamError, TruncatedStreamError

__all__ = ["TilePath", "TileHead", "TILE_HEAD", "DIGEST_BYTES", "SECTIONS", "pack_tile", "read_head", "read_sections"]

TILE_HEAD = struct.Struct("<IBBBB")
_LENGTH = struct.Struct("<I")
DIGEST_BYTES = 32


class TilePath(IntEnum):
    """The coder of a tile (the path byte of its head)."""

    LEARNED_INT = 0  # latents + residual layer (integer volumes of format 1 streams)
    RAW = 1  # zstd byte planes (lossless floats)
    LEARNED_FLOAT = 2  # latents + residual layer + exceptions (float volumes)
    PREDICTIVE = 3  # the predictive coder (integer volumes)
    PALETTE = 4  # distinct values + the predictive coder's indices (format 3.0)
    TRANSFORM = 5  # the transform coder (lossy integer volumes, format 4.0)


#: Sections each path's payload holds.
SECTIONS = {TilePath.LEARNED_INT: 3, TilePath.LEARNED_FLOAT: 3, TilePath.PALETTE: 2}


@dataclass(frozen=True)
class TileHead:
    """The fields of a tile chunk's head."""

    index: int
    path: int  # a TilePath value if valid: the decoder checks it against what the stream allows
    levels: int
    n_buckets: int
    reserved: int


def pack_tile(
    index: int, path: TilePath, sections: list[bytes], digest: bytes, *, levels: int = 0, n_buckets: int = 0
) -> bytes:
    """A tile chunk's payload."""
    body = b"".join(_LENGTH.pack(len(s)) + s for s in sections)
    return TILE_HEAD.pack(index, path, levels, n_buckets, 0) + body + digest


def read_head(payload: bytes) -> TileHead:
    """A tile chunk's head (unchecked: the decoder knows which values the stream allows).

    Raises:
        CorruptStreamError: The payload is shorter than a head.
    """
    try:
        return TileHead(*TILE_HEAD.unpack_from(payload))
    except struct.error:
        raise CorruptStreamError("tile chunk is too short") from None


def read_sections(payload: bytes, path: int) -> tuple[list[bytes], bytes]:
    """The sections of a tile chunk whose head names ``path`` (as many as it holds), and its
    stored checksum.

    Raises:
        TruncatedStreamError: A section runs past the payload.
        CorruptStreamError: The checksum field is malformed.
    """
    sections, pos = [], TILE_HEAD.size
    for _ in range(SECTIONS.get(path, 1)):
        if pos + _LENGTH.size > len(payload):
            raise TruncatedStreamError("tile chunk ends inside a section header")
        (n,) = _LENGTH.unpack_from(payload, pos)
        if pos + _LENGTH.size + n > len(payload):
            raise TruncatedStreamError("tile section runs past its chunk")
        sections.append(payload[pos + _LENGTH.size : pos + _LENGTH.size + n])
        pos += _LENGTH.size + n
    if len(payload) - pos != DIGEST_BYTES:
        raise CorruptStreamError("tile chunk has a malformed checksum field")
    return sections, payload[pos:]
