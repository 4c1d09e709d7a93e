"""Regenerate the hostile-stream corpus in tests/data/hostile (run by hand, never by the tests).

    PYTHONPATH=src python tests/make_hostile.py

Each stream is built to exercise one way a stream can lie to the decoder; hostile.json
records the error it must raise and a fragment of its message (tests/test_hostile.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zstandard

import medcodec
from medcodec.format.container import Chunk, Header, read_stream, write_stream

HERE = Path(__file__).parent / "data" / "hostile"


def _volume() -> medcodec.Volume:
    z, y, x = np.mgrid[0:4, 0:16, 0:14]
    a = (300 * np.sin(x / 3.0) + 20 * y - 100 * z).astype(np.int16)
    return medcodec.Volume(a, spacing=(0.8, 0.8, 3.0), metadata={"Modality": "CT"})


def _header(**changes) -> Header:
    base = dict(
        dtype="int16",
        mode="lossless",
        quality=0,
        shape=(1, 1, 1),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        max_error=0.0,
        lo=0.0,
        hi=1.0,
        gain_num=1 << 16,
        tile=(1, 1, 1),
        n_tiles=1,
        model_name="",
        model_sha256=bytes(32),
        voxel_sha256=bytes(32),
    )
    base.update(changes)
    return Header(**base)


def _with_meta(payload: bytes) -> bytes:
    header, chunks = read_stream(medcodec.compress(_volume(), max_error=0))
    return write_stream(header, [Chunk(c.kind, payload) if c.kind == b"meta" else c for c in chunks])


def _relabelled(dtype: str) -> bytes:
    header, chunks = read_stream(medcodec.compress(_volume(), max_error=0))
    header.dtype = dtype
    return write_stream(header, chunks)


def _geometry(**changes) -> bytes:
    header, chunks = read_stream(medcodec.compress(_volume(), max_error=0))
    for k, v in changes.items():
        setattr(header, k, v)
    return write_stream(header, chunks)


def _relabelled_path(stream: bytes) -> bytes:
    """A lossless stream whose tiles claim the transform path (5), which only lossy streams may use."""
    header, chunks = read_stream(stream)
    return write_stream(
        header, [Chunk(c.kind, c.payload[:4] + b"\x05" + c.payload[5:]) if c.kind == b"TILE" else c for c in chunks]
    )


def _bomb(size: int) -> bytes:
    """A zstd frame that omits its content size and expands to ``size`` bytes."""
    obj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return obj.compress(b" " * size) + obj.flush()


def _lossy_volume() -> medcodec.Volume:
    z, y, x = np.mgrid[0:8, 0:32, 0:30]
    a = (300 * np.sin(x / 3.0) + 20 * y - 100 * z + 7 * np.cos(x * y)).astype(np.int16)
    return medcodec.Volume(a, spacing=(1.0, 1.0, 1.0))


def _retiled(edit) -> bytes:
    """A lossy stream whose one tile's payload went through ``edit`` (chunk CRCs recomputed)."""
    header, chunks = read_stream(medcodec.compress(_lossy_volume(), quality=60))
    return write_stream(header, [Chunk(c.kind, edit(c.payload)) if c.kind == b"TILE" else c for c in chunks])


def _transform_params(change) -> bytes:
    """A transform tile whose parameter words went through ``change`` (the section re-sealed)."""
    import struct

    from medcodec.coding.transform import _HEAD

    def edit(payload: bytes) -> bytes:
        assert payload[4] == 5, "the tile is not a transform tile"
        (size,) = struct.unpack_from("<I", payload, 8)
        section = payload[12 : 12 + size]
        z, n_head, n_table, n_low = _HEAD.unpack_from(section)
        words = np.frombuffer(zstandard.decompress(section[_HEAD.size : _HEAD.size + n_head]), "<i8").copy()
        change(words)
        head = zstandard.ZstdCompressor().compress(words.tobytes())
        new = _HEAD.pack(z, len(head), n_table, n_low) + head + section[_HEAD.size + n_head :]
        return payload[:8] + struct.pack("<I", len(new)) + new + payload[12 + size :]

    return _retiled(edit)


def _set(index: int, value: int):
    def change(words: np.ndarray) -> None:
        words[index] = value

    return change


def corpus() -> dict[str, tuple[bytes, str, str]]:
    """name -> (stream, error class name, message fragment)."""
    good = medcodec.compress(_volume(), max_error=0)
    return {
        "tile-count-blowup": (
            write_stream(_header(shape=(1, 65535, 65535), n_tiles=65535 * 65535), []),
            "CorruptStreamError",
            "its header announces 4294836225",
        ),
        "huge-tile": (
            write_stream(_header(shape=(512, 512, 512), tile=(512, 512, 512)), []),
            "CorruptStreamError",
            r"tile \(512, 512, 512\) exceeds 4194304 voxels",
        ),
        "missing-tile-chunks": (
            write_stream(_header(shape=(128, 512, 512), tile=(64, 256, 256), n_tiles=8), []),
            "CorruptStreamError",
            "stream holds 0 tiles, its header announces 8",
        ),
        "metadata-bomb-without-size": (
            _with_meta(_bomb((64 << 20) + 1)),
            "CorruptStreamError",
            "metadata chunk is damaged or over",
        ),
        "metadata-deep-nesting": (
            _with_meta(zstandard.ZstdCompressor().compress(b"[" * 100_000 + b"]" * 100_000)),
            "CorruptStreamError",
            "not an object of strings",
        ),
        "metadata-not-strings": (
            _with_meta(zstandard.ZstdCompressor().compress(b'{"k": [1, 2]}')),
            "CorruptStreamError",
            "not an object of strings",
        ),
        "dtype-relabelled-unsigned": (_relabelled("uint16"), "CorruptStreamError", "does not fit its dtype"),
        "spacing-zero": (_geometry(spacing=(0.0, 0.8, 3.0)), "CorruptStreamError", "geometry"),
        "origin-nan": (_geometry(origin=(float("nan"), 0.0, 0.0)), "CorruptStreamError", "geometry"),
        "direction-singular": (
            _geometry(direction=(1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)),
            "CorruptStreamError",
            "geometry",
        ),
        "truncated": (good[: len(good) // 2], "TruncatedStreamError", ""),
        "header-crc": (good[:12] + bytes([good[12] ^ 1]) + good[13:], "CorruptStreamError", "header checksum mismatch"),
        "trailing-bytes": (good + b"\0" * 5, "CorruptStreamError", ""),
        # The transform path (format 4.0): words 3.. are the first band's step, offset, empty flag, weights.
        "transform-path-on-lossless": (_relabelled_path(good), "CorruptStreamError", "bad index, path"),
        "transform-weight-over-limit": (
            _transform_params(_set(6, 1 << 21)),
            "CorruptStreamError",
            "context weights are out of range",
        ),
        "transform-step-zero": (
            _transform_params(_set(3, 0)),
            "CorruptStreamError",
            "band parameters are out of range",
        ),
        "transform-step-tampered": (_transform_params(_set(3, 1 << 30)), "ChecksumError", "do not match"),
    }


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    record = {}
    for name, (data, error, fragment) in corpus().items():
        (HERE / f"{name}.mcz").write_bytes(data)
        record[name] = {"file": f"{name}.mcz", "error": error, "message": fragment}
    (HERE / "hostile.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(record)} streams to {HERE}")


if __name__ == "__main__":
    main()
