"""The transform coder: an exact integer wavelet, a decoder that reproduces the encoder's voxels,
the quality's PSNR floor, and clean refusals of damaged sections."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import medcodec
from medcodec.coding import coefficients, lifting, transform
from medcodec.errors import CorruptStreamError, MedcodecError
from medcodec.format.container import FLAG_TRANSFORM, read_stream

DATA = Path(__file__).resolve().parent / "data"
_TRANSFORM_PATH = 5


def smooth_volume(shape=(12, 48, 40), noise=4.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    v = 800 * np.exp(-(x**2 + 2 * y**2) * 2) + 60 * np.sin(6 * x + z) + rng.normal(0, noise, shape) - 200
    return v.astype(np.int16)


def tile_paths(data: bytes) -> list[int]:
    _, chunks = read_stream(data)
    return [c.payload[4] for c in chunks if c.kind == b"TILE"]


@pytest.mark.parametrize("shape,z_levels", [((9, 37, 41), 2), ((1, 8, 8), 0), ((17, 16, 70), 3), ((5, 3, 2), 1)])
def test_the_integer_wavelet_inverts_exactly(shape, z_levels):
    rng = np.random.default_rng(1)
    x = rng.integers(-(2**20), 2**20, shape)
    p = lifting.plan(shape, z_levels)
    c = lifting.forward(x, p)
    assert not np.array_equal(c, x) or not p.bands
    assert np.array_equal(lifting.inverse(c, p), x)


def test_the_bands_tile_the_layout_and_come_coarse_to_fine():
    p = lifting.plan((16, 64, 48), 2)
    cover = np.zeros(p.shape, int)
    for b in p.bands:
        cover[b.block] += 1
    cover[p.low] += 1
    assert (cover == 1).all()
    levels = [b.level for b in p.bands]
    assert levels == sorted(levels, reverse=True)
    assert p.z_levels == 2 and p.xy_levels == 3
    # A band's norm is the energy its unit error puts in the voxels: a smooth low band gathers more.
    norms, low = lifting.band_norms(p)
    assert low > norms.max() > norms.min() > 0


@pytest.mark.parametrize("z_levels", [0, 2])
@pytest.mark.parametrize("psnr", [38.0, 52.0])
def test_the_decoder_reproduces_the_encoders_voxels_within_the_bound(z_levels, psnr):
    x = smooth_volume()
    lo, hi = int(x.min()), int(x.max())
    mse = (hi - lo) ** 2 * 10 ** (-psnr / 10)
    section, recon = transform.encode_tile(x, mse, lo, hi, z_levels)
    assert ((recon - x.astype(np.int64)) ** 2).mean() <= mse
    assert recon.min() >= lo and recon.max() <= hi
    assert np.array_equal(transform.decode_tile(section, x.shape, lo, hi), recon)


def test_a_lower_psnr_costs_fewer_bits():
    x = smooth_volume()
    lo, hi = int(x.min()), int(x.max())
    sizes = [len(transform.encode_tile(x, (hi - lo) ** 2 * 10 ** (-p / 10), lo, hi, 0)[0]) for p in (35, 45, 55)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_contexts_see_only_decoded_neighbours():
    """A coefficient's context is the same whether or not the ones after it are known."""
    rng = np.random.default_rng(2)
    q = rng.integers(-5, 6, (4, 9, 7)) * (rng.random((4, 9, 7)) < 0.5)
    parent = np.abs(rng.integers(-3, 4, q.shape))
    sibling = np.abs(rng.integers(-3, 4, q.shape))
    full = coefficients.BandCoder(q.shape, parent, sibling)
    full.load(q)
    w = full.weights = coefficients.fit_weights(full)
    assert w.any()
    all_buckets, all_signs = full.contexts(np.arange(q.size))
    partial = coefficients.BandCoder(q.shape, parent, sibling, w)
    for f in range(partial.n_fronts):
        idx = partial.front(f)
        b, s = partial.contexts(idx)
        assert np.array_equal(b, all_buckets[idx]) and np.array_equal(s, all_signs[idx])
        partial.store(idx, np.abs(q).ravel()[idx], np.sign(q).ravel()[idx])
    assert np.array_equal(partial.values(), q)


def test_magnitude_tokens_round_trip():
    u = np.concatenate([np.arange(300), 2 ** np.arange(8, 31), 2 ** np.arange(8, 31) - 1]).astype(np.int64)
    tok, nraw, raw = coefficients.magnitude_tokens(u)
    assert tok.max() < coefficients.MAX_TOKENS
    assert np.array_equal(coefficients.token_raw_bits(tok), nraw)
    assert np.array_equal(coefficients.magnitudes(tok, raw), u)


@pytest.mark.parametrize("quality", [20, 45, 70])
def test_lossy_integer_streams_keep_the_quality_psnr_floor(quality):
    x = smooth_volume((10, 40, 36), seed=quality)
    data = medcodec.compress(medcodec.Volume(x, spacing=(1.0, 1.0, 1.0)), quality=quality)
    assert medcodec.info(data).format_version == "4.1"
    header, _ = read_stream(data)
    assert header.flags & FLAG_TRANSFORM
    assert _TRANSFORM_PATH in tile_paths(data)
    out = medcodec.decompress(data).array
    span = float(x.max()) - float(x.min())
    mse = ((out.astype(np.float64) - x) ** 2).mean()
    assert 10 * np.log10(span**2 / mse) >= 20 + quality / 2


def test_the_transform_beats_a_per_voxel_bound_at_equal_quality():
    """What it is for: fewer bits than the predictive coder with the quality's error bound."""
    x = smooth_volume((16, 64, 64), noise=8.0)
    vol = medcodec.Volume(x)
    data = medcodec.compress(vol, quality=40)
    assert set(tile_paths(data)) == {_TRANSFORM_PATH}
    span = int(x.max()) - int(x.min())
    bound = int(span * 10 ** (-40 / 20))
    assert len(data) < len(medcodec.compress(vol, max_error=bound))


def test_the_golden_transform_streams_use_the_transform_path():
    record = json.loads((DATA / "golden.json").read_text())
    names = [n for n, e in record["streams"].items() if e.get("format") in ("4.0", "4.1")]
    assert len(names) >= 4
    for name in names:
        assert _TRANSFORM_PATH in tile_paths((DATA / record["streams"][name]["file"]).read_bytes()), name


def _section(x: np.ndarray) -> tuple[bytes, int, int]:
    lo, hi = int(x.min()), int(x.max())
    section, _ = transform.encode_tile(x, (hi - lo) ** 2 * 1e-4, lo, hi, 0)
    return section, lo, hi


def test_damaged_sections_are_refused_cleanly():
    x = smooth_volume((6, 32, 32))
    section, lo, hi = _section(x)
    with pytest.raises(MedcodecError):
        transform.decode_tile(section[:5], x.shape, lo, hi)
    with pytest.raises(MedcodecError):
        transform.decode_tile(section[:-4], x.shape, lo, hi)
    z_levels, n_head, n_table, n_low = transform._HEAD.unpack_from(section)
    too_deep = transform._HEAD.pack(9, n_head, n_table, n_low) + section[transform._HEAD.size :]
    with pytest.raises(CorruptStreamError, match="header is invalid"):
        transform.decode_tile(too_deep, x.shape, lo, hi)
    rng = np.random.default_rng(3)
    for _ in range(40):
        damaged = bytearray(section)
        at = int(rng.integers(transform._HEAD.size, len(damaged)))
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        try:
            out = transform.decode_tile(bytes(damaged), x.shape, lo, hi)
        except MedcodecError:
            continue
        # A flip the coder cannot see still decodes within the range (the tile checksum catches it).
        assert out.shape == x.shape and out.min() >= lo and out.max() <= hi


def test_band_parameters_out_of_range_are_refused():
    x = smooth_volume((6, 32, 32))
    section, lo, hi = _section(x)
    _, n_head, n_table, n_low = transform._HEAD.unpack_from(section)
    import zstandard

    at = transform._HEAD.size
    words = np.frombuffer(zstandard.decompress(section[at : at + n_head]), "<i8").copy()
    words[3] = 0  # the first band's step
    head = zstandard.ZstdCompressor().compress(words.tobytes())
    damaged = transform._HEAD.pack(0, len(head), n_table, n_low) + head + section[at + n_head :]
    with pytest.raises(CorruptStreamError, match="band parameters"):
        transform.decode_tile(damaged, x.shape, lo, hi)


def test_a_transform_flag_needs_format_4_and_a_lossy_integer_stream():
    data = medcodec.compress(medcodec.Volume(smooth_volume((6, 32, 32))), quality=50)
    header, _ = read_stream(data)
    assert header.flags & FLAG_TRANSFORM
    lossless = medcodec.compress(medcodec.Volume(smooth_volume((6, 32, 32))), max_error=0)
    assert medcodec.info(lossless).format_version == "5.0"
    # The flag on a lossless header is refused (the header CRC re-sealed so only the flag is wrong).
    from medcodec.format.container import MAGIC

    damaged = bytearray(lossless)
    (size,) = struct.unpack_from("<I", damaged, len(MAGIC) + 4)
    flags_at = len(MAGIC) + 8 + 3
    damaged[flags_at] |= FLAG_TRANSFORM
    import zlib

    end = len(MAGIC) + 8 + size
    struct.pack_into("<I", damaged, end, zlib.crc32(bytes(damaged[len(MAGIC) : end])))
    with pytest.raises(CorruptStreamError):
        medcodec.decompress(bytes(damaged))


@pytest.mark.skipif(transform._kernels() is None, reason="numba is not installed (or MEDCODEC_NO_JIT is set)")
@pytest.mark.parametrize("z_levels", [0, 2])
def test_compiled_kernels_and_the_numpy_reference_write_and_read_the_same_streams(monkeypatch, z_levels):
    x = smooth_volume((10, 40, 44), noise=9.0, seed=4)
    lo, hi = int(x.min()), int(x.max())
    mse = (hi - lo) ** 2 * 10 ** (-4.6)
    compiled, recon = transform.encode_tile(x, mse, lo, hi, z_levels)
    monkeypatch.setattr(transform, "_KERNELS", False)
    reference, recon_ref = transform.encode_tile(x, mse, lo, hi, z_levels)
    assert compiled == reference and np.array_equal(recon, recon_ref)
    assert np.array_equal(transform.decode_tile(compiled, x.shape, lo, hi), recon)
    monkeypatch.setattr(transform, "_KERNELS", None)
    assert np.array_equal(transform.decode_tile(compiled, x.shape, lo, hi), recon)


def test_one_step_for_the_volume_shares_the_error_budget_between_tiles():
    """A flat tile leaves its share of the error to a busy one; the volume keeps its PSNR."""
    rng = np.random.default_rng(5)
    x = np.zeros((6, 300, 40), np.int16)
    x[:, 256:] = rng.normal(0, 300, (6, 44, 40)).astype(np.int16)  # the second tile (y >= 256) is noise
    x[:, :256] = 100
    x[0, 0, 0] = -900
    quality = 40
    out = medcodec.decompress(medcodec.compress(medcodec.Volume(x), quality=quality)).array.astype(np.float64)
    span = float(x.max()) - float(x.min())
    target = span**2 * 10 ** (-(20 + quality / 2) / 10)
    assert ((out - x) ** 2).mean() <= target
    assert ((out[:, 256:] - x[:, 256:]) ** 2).mean() > target  # more than a per-tile bound would allow
