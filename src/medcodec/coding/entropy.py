"""Entropy coding of integer arrays split into groups, each with its own table.

Both the latents (one group per channel) and the residuals (one group per
context) are coded this way. The decoder knows which group every position
belongs to, so it can decode group by group, vectorized.

Each group's frequency table is measured by the encoder and stored in the
stream (a semi-static model), so the decoder needs no floating-point model to
reproduce it: the table is integers, turned into constriction's fixed-point
categorical model by the same deterministic code on both sides. Values outside
a group's table window are coded as an escape symbol and stored, as int64, in a
zstandard-compressed side array.

Encoded layout (all little-endian)::

    u32 table_bytes | zstd(int64 table words) | u32 escape_bytes | zstd(int64 escapes)
    | u32 word_count | ANS words (u32 each)

Table words, per non-empty group in group order: ``low, width, count[0..width+1]``
where counts cover [escape-below, low .. low+width-1, escape-above].
"""

from __future__ import annotations

import struct

import constriction
import numpy as np
import zstandard

from ..errors import CorruptStreamError, TruncatedStreamError

__all__ = ["encode_groups", "decode_groups", "unzstd", "MAX_TABLE_WIDTH"]

#: Widest run of values a group's table covers; others escape.
MAX_TABLE_WIDTH = 4096
_ZSTD_LEVEL = 9


def _model(counts: np.ndarray):
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _window(values: np.ndarray) -> tuple[int, int]:
    lo, hi = int(values.min()), int(values.max())
    if hi - lo + 1 <= MAX_TABLE_WIDTH:
        return lo, hi - lo + 1
    # Centre the window on the median: the tails escape.
    mid = int(np.median(values))
    lo = max(lo, mid - MAX_TABLE_WIDTH // 2)
    return lo, min(MAX_TABLE_WIDTH, hi - lo + 1)


def encode_groups(values: np.ndarray, groups: np.ndarray, n_groups: int) -> bytes:
    """Encode ``values`` (int64, any shape) whose positions belong to ``groups`` (same shape).

    Returns the encoded bytes; :func:`decode_groups` with the same ``groups`` inverts it.
    """
    values = np.asarray(values, dtype=np.int64).ravel()
    groups = np.asarray(groups).ravel()
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    table: list[np.ndarray] = []
    escapes: list[np.ndarray] = []
    coded: list[tuple[np.ndarray, object]] = []
    for g in range(n_groups):
        v = values[order[bounds[g] : bounds[g + 1]]]
        if v.size == 0:
            continue
        low, width = _window(v)
        sym = v - low + 1
        below, above = sym < 1, sym > width
        sym = np.clip(sym, 0, width + 1).astype(np.int32)
        escapes.append(v[below | above])
        counts = np.bincount(sym, minlength=width + 2).astype(np.int64)
        table.append(np.concatenate([[low, width], counts]))
        coded.append((sym, _model(counts)))
    coder = constriction.stream.stack.AnsCoder()
    for sym, model in reversed(coded):
        coder.encode_reverse(sym, model)
    words = coder.get_compressed().astype("<u4").tobytes()
    zc = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    tbl = zc.compress(np.concatenate(table).astype("<i8").tobytes()) if table else b""
    esc = np.concatenate(escapes) if escapes else np.zeros(0, np.int64)
    esc_bytes = zc.compress(esc.astype("<i8").tobytes()) if esc.size else b""
    return b"".join(
        [
            struct.pack("<I", len(tbl)),
            tbl,
            struct.pack("<I", len(esc_bytes)),
            esc_bytes,
            struct.pack("<I", len(words) // 4),
            words,
        ]
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedStreamError("entropy-coded section ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]


def unzstd(blob: bytes, max_size: int) -> bytes:
    """Decompress one zstandard frame of at most ``max_size`` bytes, with nothing after it.

    Raises:
        CorruptStreamError: The frame is damaged, too large, or followed by other bytes.
    """
    if not blob:
        return b""
    try:
        declared = zstandard.get_frame_parameters(blob).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > max_size:
            raise CorruptStreamError("zstandard block is larger than its structure allows")
        if declared == zstandard.CONTENTSIZE_UNKNOWN and _frame_size(blob, max_size) > max_size:
            raise CorruptStreamError("zstandard block decompresses past the size its structure allows")
        obj = zstandard.ZstdDecompressor().decompressobj()
        out = obj.decompress(blob)
        if len(out) > max_size or not obj.eof or obj.unused_data:
            raise CorruptStreamError("zstandard block is malformed or has trailing bytes")
        return out
    except zstandard.ZstdError as exc:
        raise CorruptStreamError(f"bad zstandard block: {exc}") from None


def _frame_size(blob: bytes, max_size: int) -> int:
    """Bytes the first frame of ``blob`` decompresses to, counted in pieces and no further than ``max_size + 1``.

    A frame that omits its content size could otherwise expand without bound before a
    size check sees it.
    """
    total = 0
    with zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False) as reader:
        while total <= max_size:
            piece = reader.read(min(1 << 20, max_size + 1 - total))
            if not piece:
                break
            total += len(piece)
    return total


def decode_groups(data: bytes, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Decode the values :func:`encode_groups` encoded for the same ``groups``; returns int64, groups' shape."""
    shape = np.shape(groups)
    groups = np.asarray(groups).ravel()
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    sizes = np.diff(bounds)
    nonempty = int((sizes > 0).sum())
    r = _Reader(data)
    max_table = 8 * nonempty * (MAX_TABLE_WIDTH + 4)
    table = np.frombuffer(unzstd(r.take(r.u32()), max_table), dtype="<i8")
    esc = np.frombuffer(unzstd(r.take(r.u32()), 8 * groups.size), dtype="<i8")
    n_words = r.u32()
    words = np.frombuffer(r.take(4 * n_words), dtype="<u4").astype(np.uint32)
    if r.pos != len(data):
        raise CorruptStreamError("entropy-coded section has trailing bytes")
    out = np.empty(groups.size, dtype=np.int64)
    coder = constriction.stream.stack.AnsCoder(words)
    t, e = 0, 0
    for g in range(n_groups):
        n = int(sizes[g])
        if n == 0:
            continue
        if t + 2 > table.size:
            raise CorruptStreamError("frequency table is short")
        low, width = int(table[t]), int(table[t + 1])
        if not 1 <= width <= MAX_TABLE_WIDTH or t + 4 + width > table.size:
            raise CorruptStreamError("frequency table is malformed")
        counts = table[t + 2 : t + 4 + width]
        t += 4 + width
        if (counts < 0).any() or counts.sum() != n:
            raise CorruptStreamError("frequency table does not match the group size")
        sym = coder.decode(_model(counts), n).astype(np.int64)
        v = sym + (low - 1)
        below, above = sym == 0, sym == width + 1
        k = int((below | above).sum())
        if k:
            if e + k > esc.size:
                raise CorruptStreamError("escape values are missing")
            # Escapes come in position order, each below or above the window as its symbol says.
            fill = esc[e : e + k]
            side = below[below | above]
            if (fill[side] >= low).any() or (fill[~side] < low + width).any():
                raise CorruptStreamError("escape value inside its table window")
            v[below | above] = fill
            e += k
        out[order[bounds[g] : bounds[g + 1]]] = v
    if t != table.size or e != esc.size or not coder.is_empty():
        raise CorruptStreamError("entropy-coded section has unused table, escape or coded data")
    return out.reshape(shape)
