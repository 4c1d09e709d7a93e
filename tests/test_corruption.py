"""Damaged streams raise a MedcodecError subclass: never a wrong volume, never a hang."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import medcodec
from medcodec import (
    CorruptStreamError,
    InvalidInputError,
    MedcodecError,
    ModelMismatchError,
    ModelNotFoundError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from medcodec.format.container import MAGIC, READ_MAJORS
from tests.conftest import synthetic


@pytest.fixture(scope="module", params=["lossy", "near-lossless", "lossless", "raw-float", "learned-float"])
def stream(request) -> bytes:
    a = synthetic(shape=(6, 30, 28))
    if request.param == "raw-float":
        return medcodec.compress(a.astype(np.float32) + np.float32(0.25), max_error=0)
    if request.param == "learned-float":
        return medcodec.compress(a.astype(np.float32) + np.float32(0.25), max_error=0.5)
    kwargs = {"lossy": {"quality": 60}, "near-lossless": {"max_error": 2}, "lossless": {"max_error": 0}}
    return medcodec.compress(medcodec.Volume(a, metadata={"k": "v"}), **kwargs[request.param])


def _positions(n: int, count: int = 120) -> list[int]:
    # Every byte of the first 200 (magic, header), then an even spread over the rest.
    head = list(range(min(n, 200)))
    rest = np.linspace(200, n - 1, num=count, dtype=int).tolist() if n > 200 else []
    return sorted(set(head + rest))


def test_single_byte_flips_always_raise(stream):
    for pos in _positions(len(stream)):
        damaged = bytearray(stream)
        damaged[pos] ^= 0x5A
        with pytest.raises(MedcodecError):
            medcodec.decompress(bytes(damaged))


def test_truncations_always_raise(stream):
    for n in _positions(len(stream) - 1, 60):
        with pytest.raises((TruncatedStreamError, CorruptStreamError)):
            medcodec.decompress(stream[:n])


def test_empty_and_foreign_data():
    with pytest.raises(TruncatedStreamError):
        medcodec.decompress(b"")
    with pytest.raises(CorruptStreamError, match="magic"):
        medcodec.decompress(b"\x1f\x8b" + bytes(100))
    with pytest.raises(MedcodecError):
        medcodec.info(b"not a stream at all")


def test_trailing_garbage_is_rejected(stream):
    with pytest.raises(CorruptStreamError):
        medcodec.decompress(stream + b"\x00")


def test_newer_major_version_is_unsupported(stream):
    damaged = bytearray(stream)
    newer = max(READ_MAJORS) + 1
    struct.pack_into("<H", damaged, len(MAGIC), newer)
    # Re-seal the header checksum so only the version is wrong.
    import zlib

    (size,) = struct.unpack_from("<I", damaged, len(MAGIC) + 4)
    end = len(MAGIC) + 8 + size
    struct.pack_into("<I", damaged, end, zlib.crc32(bytes(damaged[len(MAGIC) : end])))
    with pytest.raises(UnsupportedVersionError, match=rf"version {newer}\.[01] is not supported"):
        medcodec.decompress(bytes(damaged))


def test_unknown_model_in_stream(stream, tmp_path):
    if medcodec.info(stream).model_name == "":
        pytest.skip("raw float and integer streams need no model")
    name = medcodec.info(stream).model_name.encode()
    damaged = bytearray(stream.replace(name, b"mc3d-s-00000000"[: len(name)].ljust(len(name), b"0"), 1))
    _reseal_header(damaged)
    with pytest.raises(ModelNotFoundError, match="mc3d-s-0000"):
        medcodec.decompress(bytes(damaged))


def test_different_model_is_refused(stream, tmp_path):
    if medcodec.info(stream).model_name == "":
        pytest.skip("raw float and integer streams need no model")
    if medcodec.info(stream).format_version == "4.1":
        from medcodec.coding.priors import TableCounts, load_prior, save_prior

        # The shipped prior's rows under other metadata: a valid prior with another hash.
        shipped, counts = load_prior(), TableCounts()
        for key in shipped.tokens:
            counts.add(key, shipped.tokens[key], shipped.signs[key])
        other = save_prior(counts, {"note": "a different file"}, tmp_path)
        with pytest.raises(ModelMismatchError):
            medcodec.decompress(stream, tables=other)
        return
    from medcodec.model.files import _parse, resolve_model, save_model_file

    # The same weights with other metadata: a valid model with another hash.
    arch, tensors, meta = _parse(resolve_model(None).read_bytes(), "default")
    other = save_model_file(arch, tensors, {**meta, "note": "a different file"}, tmp_path)
    with pytest.raises(ModelMismatchError):
        medcodec.decompress(stream, model=str(other))


def _reseal_header(buf: bytearray) -> None:
    import zlib

    (size,) = struct.unpack_from("<I", buf, len(MAGIC) + 4)
    end = len(MAGIC) + 8 + size
    struct.pack_into("<I", buf, end, zlib.crc32(bytes(buf[len(MAGIC) : end])))


def test_deeply_nested_metadata_is_corrupt_not_a_recursion_error():
    import zstandard

    from medcodec.format.container import Chunk, read_stream, write_stream

    a = synthetic(shape=(6, 30, 28))
    header, chunks = read_stream(medcodec.compress(medcodec.Volume(a, metadata={"k": "v"}), max_error=0))
    assert b"meta" in [c.kind for c in chunks]
    deep = zstandard.ZstdCompressor().compress(b"[" * 100_000 + b"]" * 100_000)
    # write_stream seals every chunk with its own CRC: only the metadata's content is wrong.
    damaged = write_stream(header, [Chunk(c.kind, deep) if c.kind == b"meta" else c for c in chunks])
    with pytest.raises(CorruptStreamError, match="metadata chunk is not an object of strings"):
        medcodec.decompress(damaged)


def test_a_header_announcing_billions_of_tiles_is_refused_before_building_them():
    from medcodec.format.container import Header, write_stream

    header = Header(
        dtype="int16",
        mode="lossless",
        quality=0,
        shape=(1, 65535, 65535),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        max_error=0.0,
        lo=0.0,
        hi=1.0,
        gain_num=1 << 16,
        tile=(1, 1, 1),
        n_tiles=65535 * 65535,
        model_name="",
        model_sha256=bytes(32),
        voxel_sha256=bytes(32),
    )
    data = write_stream(header, [])
    assert len(data) < 400
    with pytest.raises(CorruptStreamError, match="4294836225"):
        medcodec.decompress(data)


def test_a_zstd_frame_without_its_size_cannot_expand_past_the_limit():
    import zstandard

    from medcodec.coding.entropy import unzstd

    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    blob = cobj.compress(bytes(64 << 20)) + cobj.flush()  # 64 MiB of zeros in a few kB
    assert zstandard.get_frame_parameters(blob).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert len(blob) < 1 << 16
    with pytest.raises(CorruptStreamError, match="past the size"):
        unzstd(blob, 1 << 20)
    assert len(unzstd(blob, 64 << 20)) == 64 << 20


def test_a_stream_relabelled_to_another_integer_dtype_is_refused():
    from medcodec.format.container import read_stream, write_stream

    a = (synthetic(shape=(4, 20, 18)).astype(np.int64) - 40).astype(np.int16)
    assert a.min() < 0
    header, chunks = read_stream(medcodec.compress(a, max_error=0))
    header.dtype = "uint16"  # same voxel bytes, same checksums: only the range gives it away
    with pytest.raises(CorruptStreamError, match="does not fit its dtype"):
        medcodec.decompress(write_stream(header, chunks))


@pytest.mark.parametrize(
    "field, value",
    [
        ("spacing", (0.0, 1.0, 1.0)),
        ("spacing", (1.0, -2.0, 1.0)),
        ("spacing", (1.0, 1.0, float("nan"))),
        ("origin", (float("inf"), 0.0, 0.0)),
        ("direction", (1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)),
    ],
)
def test_impossible_geometry_is_refused_in_a_stream_and_in_a_volume(field, value):
    from medcodec.format.container import read_stream, write_stream

    header, chunks = read_stream(medcodec.compress(synthetic(shape=(3, 10, 9)), max_error=0))
    setattr(header, field, value)
    with pytest.raises(CorruptStreamError, match="geometry"):
        medcodec.decompress(write_stream(header, chunks))
    with pytest.raises(InvalidInputError, match=field):
        medcodec.Volume(np.zeros((2, 3, 4), np.int16), **{field: value})


def test_info_refuses_what_is_not_bytes_as_decompress_does():
    for bad in ("stream.mcz", None, 3):
        with pytest.raises(InvalidInputError, match="expects bytes"):
            medcodec.info(bad)


def test_over_limit_metadata_is_named_as_such_and_never_written():
    import zstandard

    from medcodec.codec import METADATA_LIMIT
    from medcodec.format.container import Chunk, read_stream, write_stream

    vol = medcodec.Volume(synthetic(shape=(2, 8, 8)), metadata={"k": "x" * METADATA_LIMIT})
    with pytest.raises(InvalidInputError, match="metadata"):
        medcodec.compress(vol, max_error=0)
    header, chunks = read_stream(medcodec.compress(medcodec.Volume(vol.array, metadata={"k": "v"}), max_error=0))
    big = zstandard.ZstdCompressor().compress(b'{"k": "' + b"x" * METADATA_LIMIT + b'"}')
    with pytest.raises(CorruptStreamError, match="metadata chunk is damaged or over"):
        medcodec.decompress(write_stream(header, [Chunk(c.kind, big) if c.kind == b"meta" else c for c in chunks]))


@pytest.mark.parametrize("dtype, max_error", [("float32", 1e308), ("float32", 1e30), ("float64", 1e300)])
def test_float_bounds_past_the_span_write_streams_that_decode(dtype, max_error):
    a = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(dtype)
    out = medcodec.decompress(medcodec.compress(a, max_error=max_error)).array
    assert np.isfinite(out).all() and a.min() <= out.min() and out.max() <= a.max()


def test_a_float_span_past_float64_is_lossless_only():
    a = np.array([[[-1.7e308, 1.7e308, 0.5, 3.25]]])
    for options in ({}, {"max_error": 1e308}, {"quality": 10}):
        with pytest.raises(InvalidInputError, match="wider than float64"):
            medcodec.compress(a, **options)
    assert np.array_equal(medcodec.decompress(medcodec.compress(a, max_error=0)).array, a)


def test_metadata_that_is_not_a_flat_object_is_refused_before_it_is_parsed():
    import zstandard

    from medcodec.codec import METADATA_ENTRIES
    from medcodec.format.container import Chunk, read_stream, write_stream

    header, chunks = read_stream(
        medcodec.compress(medcodec.Volume(synthetic(shape=(2, 8, 8)), metadata={"k": "v"}), max_error=0)
    )

    def with_meta(text: bytes) -> bytes:
        payload = zstandard.ZstdCompressor().compress(text)
        return write_stream(header, [Chunk(c.kind, payload) if c.kind == b"meta" else c for c in chunks])

    lists = b"[" + b"[]," * (4 << 20) + b"[]]"  # as Python lists this would take gigabytes
    with pytest.raises(CorruptStreamError, match="not an object of strings"):
        medcodec.decompress(with_meta(lists))
    many = b"{" + b",".join(b'"%d":""' % i for i in range(METADATA_ENTRIES + 1)) + b"}"
    with pytest.raises(CorruptStreamError, match="more than 65536 entries"):
        medcodec.decompress(with_meta(many))
    ok = medcodec.decompress(with_meta(b'{"a \\" \\\\ b": "x\\u00e9", "c": ""}')).metadata
    assert ok == {'a " \\ b': "x\u00e9", "c": ""}


@pytest.mark.parametrize("max_error", [2**62, 2**63, 10**30])
def test_a_huge_integer_bound_is_capped_at_the_span(max_error):
    a = synthetic(shape=(2, 9, 8)).astype(np.int16)
    data = medcodec.compress(a, max_error=max_error)
    assert medcodec.info(data).max_error == max(1, int(a.max()) - int(a.min()))
    out = medcodec.decompress(data).array
    assert a.min() <= out.min() and out.max() <= a.max()
