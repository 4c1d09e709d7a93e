"""Round trips of compress/decompress on synthetic volumes: modes, dtypes, shapes, options."""

from __future__ import annotations

import numpy as np
import pytest

import medcodec
from medcodec import InvalidInputError, Volume
from tests.conftest import synthetic

INT_DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint32"]


@pytest.mark.parametrize("dtype", INT_DTYPES + ["float32", "float64"])
def test_lossless_is_bit_exact(dtype):
    a = synthetic(dtype=dtype)
    out = medcodec.decompress(medcodec.compress(a, max_error=0))
    assert out.array.dtype == a.dtype
    assert out.array.tobytes() == a.tobytes()


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32"])
@pytest.mark.parametrize("bound", [1, 2, 4, 7])
def test_near_lossless_bound_holds_for_integers(dtype, bound):
    a = synthetic(dtype=dtype, seed=bound)
    out = medcodec.decompress(medcodec.compress(a, max_error=bound)).array
    assert out.dtype == a.dtype
    assert np.abs(out.astype(np.int64) - a.astype(np.int64)).max() <= bound


def test_fractional_bound_on_integers_uses_its_floor():
    a = synthetic()
    out = medcodec.decompress(medcodec.compress(a, max_error=2.7)).array
    assert np.abs(out.astype(np.int64) - a).max() <= 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bound", [0.01, 0.5, 3.0])
def test_near_lossless_bound_holds_for_floats(dtype, bound):
    a = synthetic(dtype=dtype) + np.float32(0.123)  # fractional values: float arithmetic
    a = a.astype(dtype)
    out = medcodec.decompress(medcodec.compress(a, max_error=bound)).array
    assert out.dtype == a.dtype
    assert np.abs(out.astype(np.float64) - a.astype(np.float64)).max() <= bound


def test_float_lossless_keeps_nan_inf_and_negative_zero():
    a = synthetic(dtype="float32") + np.float32(0.5)
    a[0, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    out = medcodec.decompress(medcodec.compress(a, max_error=0)).array
    assert out.tobytes() == a.tobytes()


def test_non_finite_values_need_lossless():
    a = synthetic(dtype="float32") + np.float32(0.5)
    a[1, 2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="lossless"):
        medcodec.compress(a, max_error=1)


def test_lossy_default_is_close_and_keeps_dtype():
    a = synthetic(shape=(8, 48, 48))
    out = medcodec.decompress(medcodec.compress(a)).array
    assert out.dtype == a.dtype and out.shape == a.shape
    from medcodec.codec import DEFAULT_QUALITY, quality_psnr

    span = float(a.max()) - float(a.min())
    mse = float(((out.astype(np.float64) - a) ** 2).mean())
    assert mse > 0 and 10 * np.log10(span**2 / mse) >= quality_psnr(DEFAULT_QUALITY)  # lossy, within its floor


def test_quality_trades_size_for_fidelity():
    a = synthetic(shape=(8, 64, 64))
    low, high = medcodec.compress(a, quality=20), medcodec.compress(a, quality=95)
    err = [np.mean((medcodec.decompress(d).array.astype(np.float64) - a) ** 2) for d in (low, high)]
    assert len(low) < len(high)
    assert err[1] < err[0]


@pytest.mark.parametrize("shape", [(1, 17, 23), (2, 9, 9), (3, 31, 5), (5, 40, 33), (70, 12, 10), (1, 1, 1)])
def test_any_shape_round_trips(shape):
    a = synthetic(shape=shape)
    out = medcodec.decompress(medcodec.compress(a, max_error=0)).array
    assert out.shape == shape and np.array_equal(out, a)
    lossy = medcodec.decompress(medcodec.compress(a, max_error=3)).array
    assert np.abs(lossy.astype(np.int64) - a).max() <= 3


def test_two_dimensional_array_is_one_slice():
    a = synthetic(shape=(1, 20, 20))[0]
    out = medcodec.decompress(medcodec.compress(a, max_error=0)).array
    assert out.shape == (1, 20, 20) and np.array_equal(out[0], a)


def test_constant_volume():
    a = np.full((4, 10, 12), 77, dtype=np.int16)
    for kw in ({}, {"max_error": 0}, {"max_error": 2}):
        assert np.array_equal(medcodec.decompress(medcodec.compress(a, **kw)).array, a)


def test_constant_float_volume_with_fraction():
    a = np.full((3, 9, 10), 2.25, dtype=np.float32)
    for kw in ({}, {"max_error": 0}, {"max_error": 0.5}):
        assert medcodec.decompress(medcodec.compress(a, **kw)).array.tobytes() == a.tobytes()


def test_extreme_integer_values():
    a = synthetic(dtype="int32")
    a[0, 0, 0], a[0, 0, 1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    for bound in (0, 5):
        out = medcodec.decompress(medcodec.compress(a, max_error=bound)).array
        assert np.abs(out.astype(np.int64) - a).max() <= bound


def test_geometry_and_metadata_round_trip():
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    vol = Volume(
        synthetic(),
        spacing=(0.7, 0.7, 2.5),
        origin=(-120.25, 33.0, 7.125),
        direction=direction,
        metadata={"descrip": "test scan"},
    )
    out = medcodec.decompress(medcodec.compress(vol, quality=50))
    assert out.spacing == vol.spacing and out.origin == vol.origin and out.direction == direction
    assert out.metadata == {"descrip": "test scan"}


def test_info_reads_the_header_only():
    a = synthetic()
    data = medcodec.compress(Volume(a, spacing=(1, 2, 3)), max_error=2)
    info = medcodec.info(data)
    assert info.shape == a.shape and info.dtype == "int16" and info.mode == "near-lossless"
    assert info.max_error == 2 and info.quality is None and info.spacing == (1.0, 2.0, 3.0)
    assert info.compressed_bytes == len(data) and info.raw_bytes == a.nbytes
    assert len(info.model_sha256) == 64
    assert medcodec.info(data[:300]).shape == a.shape  # the header alone suffices


def test_aliases():
    assert medcodec.encode is medcodec.compress and medcodec.decode is medcodec.decompress


def test_progress_is_reported_per_tile():
    a = synthetic(shape=(70, 10, 10))  # two tiles along z
    calls = []
    data = medcodec.compress(a, max_error=0, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert medcodec.info(data).n_tiles == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quality": 50, "max_error": 1}, "quality and max_error"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"quality": 50.5}, "quality"),
        ({"max_error": -1}, "max_error"),
        ({"max_error": float("nan")}, "max_error"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        medcodec.compress(synthetic(), **kwargs)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 3, 4, 5), np.int16),
        np.zeros((0, 4, 4), np.int16),
        np.zeros((2, 4, 4), np.complex64),
        np.zeros((2, 4, 4), bool),
        np.zeros(5, np.int16),
    ],
)
def test_unsupported_volumes_are_rejected(array):
    with pytest.raises(InvalidInputError):
        medcodec.compress(array)


def test_big_endian_input_is_accepted():
    a = synthetic().astype(">i2")
    out = medcodec.decompress(medcodec.compress(a, max_error=0)).array
    assert np.array_equal(out, a)


def test_the_api_is_discoverable_and_a_path_is_pointed_to_read():
    assert {"compress", "decompress", "info", "encode", "decode", "read", "write"} <= set(dir(medcodec))
    with pytest.raises(medcodec.InvalidInputError, match=r"medcodec\.read\(path\)"):
        medcodec.compress("scan.nii.gz")


def test_a_bound_below_one_on_integers_is_lossless_and_says_so():
    a = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    data = medcodec.compress(a, max_error=0.5)
    assert (medcodec.info(data).mode, medcodec.info(data).max_error) == ("lossless", 0.0)
    assert np.array_equal(medcodec.decompress(data).array, a)


def test_a_region_decodes_only_the_tiles_it_touches_and_keeps_its_place_in_space():
    a = synthetic(shape=(70, 300, 280)).astype(np.int16)  # 2 x 2 x 2 tiles
    data = medcodec.compress(Volume(a, spacing=(0.5, 0.6, 2.0), origin=(10.0, 20.0, 30.0)), max_error=0)
    seen = []
    part = medcodec.decompress(
        data, region=(slice(60, 70), slice(250, None), slice(5, 9)), progress=lambda i, n: seen.append(n)
    )
    assert np.array_equal(part.array, a[60:70, 250:, 5:9]) and seen == [1]  # one tile of eight decoded
    assert part.origin == pytest.approx((10.0 + 0.5 * 5, 20.0 + 0.6 * 250, 30.0 + 2.0 * 60))
    across = medcodec.decompress(data, region=(slice(30, 40),))
    assert np.array_equal(across.array, a[30:40])
    for bad in ((slice(0, 10, 2),), (slice(5, 5),), (slice(0, 1),) * 4, "0:1"):
        with pytest.raises(InvalidInputError, match="region"):
            medcodec.decompress(data, region=bad)


def test_a_region_is_refused_when_the_stored_tile_checksums_do_not_match_the_header():
    from medcodec.format.container import read_stream, write_stream

    a = synthetic(shape=(70, 40, 30)).astype(np.int16)  # two tiles along z
    header, chunks = read_stream(medcodec.compress(a, max_error=0))
    header.voxel_sha256 = bytes(32)
    with pytest.raises(medcodec.ChecksumError):
        medcodec.decompress(write_stream(header, chunks), region=(slice(0, 5),))


def _few_values(dtype) -> np.ndarray:
    rng = np.random.default_rng(5)
    levels = (np.arange(40, dtype=np.float64) * 0.37 - 3.1).astype(dtype)
    a = levels[np.clip((synthetic(shape=(9, 30, 26)).astype(np.int64) // 40) % 40, 0, 39)]
    a.ravel()[rng.choice(a.size, 12, replace=False)] = np.array(
        [np.nan, -np.inf, np.inf, -0.0, 5e-45 if dtype == np.float32 else 5e-324] * 3
    )[:12].astype(dtype)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floats_with_few_values_are_a_palette_and_its_indices_bit_for_bit(dtype):
    a = _few_values(dtype)
    data = medcodec.compress(a, max_error=0)
    assert medcodec.info(data).format_version == "5.0"  # a palette, its indices in format 5.0 sections
    back = medcodec.decompress(data).array
    assert back.dtype == a.dtype and np.array_equal(back.view(np.uint8), a.view(np.uint8))  # NaN, -0.0, subnormals
    planes = medcodec.compress(np.random.default_rng(0).normal(size=(4, 300, 300)).astype(dtype), max_error=0)
    assert medcodec.info(planes).format_version == "2.0"  # many values: byte planes, readable by 2.x decoders
    ints = np.nan_to_num(a.astype(np.float64), posinf=0, neginf=0).round().astype(np.int16)
    assert medcodec.info(medcodec.compress(ints, max_error=0)).format_version == "5.0"


def test_a_palette_out_of_order_or_flagged_in_an_older_version_is_refused():
    import zstandard

    from medcodec import codec as codec_module
    from medcodec.format.container import Chunk, read_stream, write_stream
    from medcodec.format.tile import TilePath, read_sections

    header, chunks = read_stream(medcodec.compress(_few_values(np.float32), max_error=0))
    tile = chunks[-1].payload
    (n,) = np.frombuffer(tile[8:12], "<u4")
    values = np.frombuffer(zstandard.ZstdDecompressor().decompress(tile[12 : 12 + n]), "<u4")
    swapped = zstandard.ZstdCompressor().compress(values[::-1].tobytes())
    bad = tile[:8] + np.uint32(len(swapped)).tobytes() + swapped + tile[12 + n :]
    with pytest.raises(medcodec.CorruptStreamError, match="palette"):
        codec_module._decode_palette(read_sections(bad, TilePath.PALETTE)[0], (9, 30, 26), np.dtype(np.float32), True)
    data = bytearray(write_stream(header, [Chunk(c.kind, c.payload) for c in chunks]))
    data[8:10] = np.uint16(2).tobytes()  # the prelude's major version, header CRC left as it was computed
    import struct
    import zlib

    (size,) = struct.unpack_from("<I", data, 12)
    struct.pack_into("<I", data, 16 + size, zlib.crc32(bytes(data[8 : 16 + size])))
    with pytest.raises(medcodec.CorruptStreamError, match="format 3.0 defines"):
        medcodec.decompress(bytes(data))


def _resealed(data: bytes, major: int, set_flags: int = 0, clear_flags: int = 0) -> bytes:
    """``data`` with its prelude's major version and header flags changed, the header CRC recomputed."""
    import struct
    import zlib

    from medcodec.format.container import MAGIC

    out = bytearray(data)
    at = len(MAGIC)
    out[at : at + 2] = np.uint16(major).tobytes()
    (size,) = struct.unpack_from("<I", out, at + 4)
    out[at + 8 + 3] = (out[at + 8 + 3] | set_flags) & ~clear_flags & 0xFF
    struct.pack_into("<I", out, at + 8 + size, zlib.crc32(bytes(out[at : at + 8 + size])))
    return bytes(out)


def test_regional_sections_need_format_5_and_a_stream_without_the_transform():
    from medcodec.format.container import FLAG_REGIONAL, FLAG_TRANSFORM, read_stream

    vol = synthetic(shape=(6, 30, 28), seed=4)
    lossless = medcodec.compress(vol, max_error=0)
    assert read_stream(lossless)[0].flags & FLAG_REGIONAL and medcodec.info(lossless).format_version == "5.0"
    assert np.array_equal(medcodec.decompress(_resealed(lossless, 5)).array, vol)
    with pytest.raises(medcodec.CorruptStreamError, match="format 5.0 defines"):
        medcodec.decompress(_resealed(lossless, 4))
    # Without the flag, the format 5.0 sections do not match the stream's version.
    with pytest.raises(medcodec.CorruptStreamError, match="format version"):
        medcodec.decompress(_resealed(lossless, 4, clear_flags=FLAG_REGIONAL))
    lossy = medcodec.compress(vol, quality=50)
    assert read_stream(lossy)[0].flags & FLAG_TRANSFORM and not read_stream(lossy)[0].flags & FLAG_REGIONAL
    with pytest.raises(medcodec.CorruptStreamError, match="transform stream"):
        medcodec.decompress(_resealed(lossy, 5, set_flags=FLAG_REGIONAL))
