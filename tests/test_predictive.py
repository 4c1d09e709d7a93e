"""The predictive coder: exact round trips, the bound at every voxel, z depth chosen from the data, clean refusals."""

from __future__ import annotations

import numpy as np
import pytest

import medcodec
from medcodec import CorruptStreamError, MedcodecError
from medcodec import codec as codec_module
from medcodec.coding import predictive, wavefront
from medcodec.coding.predictive import MAX_TOKENS, decode_tile, encode_tile, plan_tile, tokens, untokens
from tests.conftest import synthetic


def test_tokens_round_trip_over_the_whole_symbol_range():
    rng = np.random.default_rng(1)
    edges = np.array([0, 1, -1, 7, -8, 8, -9, 2**16, -(2**16), 2**32 - 1, 2**33, -(2**33)], dtype=np.int64)
    q = np.concatenate([edges, rng.integers(-(2**33), 2**33, 5000), rng.integers(-40, 40, 5000)])
    tok, nraw, raw = tokens(q)
    assert (tok < MAX_TOKENS).all() and (nraw <= 32).all() and (raw < (np.int64(1) << nraw)).all()
    assert np.array_equal(untokens(tok, raw), q)
    assert (
        tok[np.abs(q) < 8] == np.where(q[np.abs(q) < 8] >= 0, 2 * q[np.abs(q) < 8], -2 * q[np.abs(q) < 8] - 1)
    ).all()


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 6, 9), (2, 3, 2), (9, 13, 11), (17, 20, 18)])
@pytest.mark.parametrize("d", [0, 1, 3])
def test_tile_round_trip_holds_the_bound(shape, d):
    x = synthetic(shape=shape, seed=sum(shape) + d).astype(np.int64)
    lo, hi = int(x.min()), int(x.max())
    section, recon = encode_tile(x, d, lo, hi)
    assert np.abs(recon - x).max() <= d
    if d == 0:
        assert np.array_equal(recon, x)
    assert np.array_equal(decode_tile(section, shape, d, lo, hi), recon)


def test_wide_int32_spans_round_trip():
    rng = np.random.default_rng(7)
    x = rng.integers(-(2**31), 2**31 - 1, size=(4, 10, 12), dtype=np.int64)
    lo, hi = int(x.min()), int(x.max())
    section, recon = encode_tile(x, 0, lo, hi)
    assert np.array_equal(recon, x) and np.array_equal(decode_tile(section, x.shape, 0, lo, hi), x)


def test_z_depth_follows_the_data():
    rng = np.random.default_rng(3)
    plane = np.cumsum(np.cumsum(rng.normal(0, 3, (40, 40)), 0), 1)
    smooth_z = np.stack([plane + k for k in range(16)]).round().astype(np.int64)  # slices nearly equal
    independent = rng.integers(0, 4000, size=(16, 40, 40)).astype(np.int64)  # nothing to gain from z
    assert plan_tile(smooth_z, 1, int(smooth_z.min()), int(smooth_z.max()))[0] > 0
    assert plan_tile(independent, 1, 0, 4000)[0] == 0


def test_lossless_feedback_weights_take_the_scale_of_the_smallest_trial_coding(monkeypatch):
    rng = np.random.default_rng(11)
    x = synthetic(shape=(12, 40, 36), seed=4).astype(np.int64) + rng.integers(-30, 31, (12, 40, 36))
    lo, hi, n_fb = int(x.min()), int(x.max()), predictive.N_FEEDBACK
    damp = predictive._damp_feedback

    def untuned(*args, **kwargs):
        """A level's final fit without the feedback scale."""
        monkeypatch.setattr(predictive, "_damp_feedback", lambda *a: None)
        try:
            return predictive._fit_level(*args, **kwargs, final=True)
        finally:
            monkeypatch.setattr(predictive, "_damp_feedback", damp)

    for t, h in predictive._levels(x.shape[0], 1):
        fitted, _ = untuned(x, t, h, 1, lo, hi)
        tuned, _ = predictive._fit_level(x, t, h, 1, lo, hi, final=True)
        assert np.array_equal(tuned.weights[:, :-n_fb], fitted.weights[:, :-n_fb])
        full = fitted.weights[:, -n_fb:].copy()
        keep = predictive._spread(t, predictive._DAMP_SLICES)
        bits, chosen = {}, None
        for num in predictive._DAMP_FACTORS:
            fitted.weights[:, -n_fb:] = (full * num + 2) >> 2
            bits[num] = predictive._trial_bits(x[keep], *predictive._z_neighbours(x, keep, h), fitted, lo, hi)
            if chosen is None and np.array_equal(fitted.weights, tuned.weights):
                chosen = num
        assert chosen is not None and bits[chosen] == min(bits.values())
    # Near-lossless levels keep their fitted feedback weights.
    fitted, _ = untuned(x, t, h, 3, lo, hi)
    assert np.array_equal(predictive._fit_level(x, t, h, 3, lo, hi, final=True)[0].weights, fitted.weights)


@pytest.fixture
def numpy_loops(monkeypatch):
    """Run the coder's numpy reference loops instead of the compiled kernels."""

    def use(reference: bool) -> None:
        monkeypatch.setattr(predictive, "_KERNELS", False if reference else None)

    return use


@pytest.mark.skipif(not wavefront.AVAILABLE, reason="numba is not installed: only the numpy loops exist")
@pytest.mark.parametrize(
    ("shape", "d", "span"),
    [
        ((9, 21, 17), 0, 300),
        ((9, 21, 17), 2, 300),
        ((33, 24, 40), 0, 4000),
        ((20, 30, 26), 3, 4000),
        ((5, 9, 11), 0, 2**31),
    ],
)
def test_compiled_kernels_write_and_read_the_reference_loops_streams(numpy_loops, shape, d, span):
    rng = np.random.default_rng(sum(shape) + d)
    smooth = synthetic(shape=shape, seed=d).astype(np.int64)
    x = (
        smooth + rng.integers(-span // 100, span // 100 + 1, shape)
        if span < 2**31
        else rng.integers(-span, span, shape)
    )
    lo, hi = int(x.min()), int(x.max())
    numpy_loops(True)
    reference, recon = encode_tile(x, d, lo, hi)
    numpy_loops(False)
    compiled, recon_compiled = encode_tile(x, d, lo, hi)
    assert compiled == reference and np.array_equal(recon_compiled, recon)
    assert np.array_equal(decode_tile(reference, shape, d, lo, hi), recon)
    numpy_loops(True)
    assert np.array_equal(decode_tile(compiled, shape, d, lo, hi), recon)
    assert np.abs(recon - x).max() <= d


def test_numpy_loops_hold_the_bound_where_numba_is_missing(numpy_loops):
    numpy_loops(True)
    x = synthetic(shape=(6, 14, 12), seed=5).astype(np.int64)
    lo, hi = int(x.min()), int(x.max())
    section, recon = encode_tile(x, 1, lo, hi)
    assert np.abs(recon - x).max() <= 1 and np.array_equal(decode_tile(section, x.shape, 1, lo, hi), recon)


def test_damaged_parameters_are_refused():
    x = synthetic(shape=(5, 16, 16), seed=2).astype(np.int64)
    lo, hi = int(x.min()), int(x.max())
    section, _ = encode_tile(x, 0, lo, hi)
    with pytest.raises(MedcodecError):
        decode_tile(section[:3], x.shape, 0, lo, hi)
    with pytest.raises(MedcodecError):
        decode_tile(section[:-4], x.shape, 0, lo, hi)
    with pytest.raises(CorruptStreamError):
        decode_tile(bytes([9]) + section[1:], x.shape, 0, lo, hi)  # more z levels than the format allows
    with pytest.raises(MedcodecError):
        decode_tile(section, x.shape, 0, lo + 1, hi)  # fill or counts no longer fit


def _halves(shape: tuple[int, int, int]) -> np.ndarray:
    """A tile whose left and right halves have different textures: one linear predictor fits neither well."""
    rng = np.random.default_rng(11)
    x = np.cumsum(rng.normal(0, 4, shape), axis=2) + np.cumsum(rng.normal(0, 4, shape), axis=1)
    half = shape[2] // 2
    x[:, :, half:] = 400 + 3 * np.cumsum(rng.normal(0, 6, (*shape[:2], shape[2] - half)), axis=1)
    return np.round(x).astype(np.int64)


@pytest.mark.parametrize("d", [0, 2])
def test_regional_weights_round_trip_and_pay_where_a_tile_changes_texture(numpy_loops, d):
    x = _halves((16, 130, 130))
    lo, hi = int(x.min()), int(x.max())
    assert predictive._block(16, 130, 130) == 128  # the encoder gives this tile 4 weight regions
    numpy_loops(False)
    compiled, recon = encode_tile(x, d, lo, hi, z_levels=0)
    numpy_loops(True)
    reference, recon_ref = encode_tile(x, d, lo, hi, z_levels=0)
    assert compiled == reference and np.array_equal(recon, recon_ref) and np.abs(recon - x).max() <= d
    assert np.array_equal(decode_tile(compiled, x.shape, d, lo, hi), recon)
    numpy_loops(False)
    assert np.array_equal(decode_tile(compiled, x.shape, d, lo, hi), recon)
    one_region, _ = encode_tile(x, d, lo, hi, z_levels=0, regional=False)
    assert len(compiled) < len(one_region)


def test_a_section_whose_layout_or_regions_do_not_match_its_stream_is_refused():
    x = _halves((16, 130, 130))
    lo, hi = int(x.min()), int(x.max())
    regional, _ = encode_tile(x, 0, lo, hi, z_levels=0)
    older, recon = encode_tile(x, 0, lo, hi, z_levels=0, regional=False)
    assert np.array_equal(decode_tile(older, x.shape, 0, lo, hi, regional=False), recon)
    with pytest.raises(CorruptStreamError, match="format version"):
        decode_tile(older, x.shape, 0, lo, hi)
    with pytest.raises(CorruptStreamError, match="format version"):
        decode_tile(regional, x.shape, 0, lo, hi, regional=False)
    # The first level's region side (the second parameter word) set to one the format forbids.
    import struct

    import zstandard

    _, n_head, n_table = struct.unpack_from("<BII", regional)
    words = np.frombuffer(zstandard.ZstdDecompressor().decompress(regional[9 : 9 + n_head]), "<i8").copy()
    assert words[1] == 128
    for side in (16, 1 << 20):
        words[1] = side
        head = zstandard.ZstdCompressor().compress(words.tobytes())
        bad = struct.pack("<BII", regional[0], len(head), n_table) + head + regional[9 + n_head :]
        with pytest.raises(CorruptStreamError, match="regions"):
            decode_tile(bad, x.shape, 0, lo, hi)


def test_one_or_two_threads_write_the_same_stream_and_decode_the_same_voxels(monkeypatch):
    vol = synthetic(shape=(70, 40, 30), seed=9)  # two tiles along z
    data = medcodec.compress(vol, max_error=1)
    assert medcodec.info(data).n_tiles == 2
    two = medcodec.decompress(data).array
    monkeypatch.setattr(codec_module, "_WORKERS", 1)
    assert medcodec.compress(vol, max_error=1) == data
    one = medcodec.decompress(data).array
    assert np.array_equal(one, two) and np.abs(one.astype(np.int64) - vol).max() <= 1


def test_integer_streams_never_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, medcodec\n"
        "a = np.arange(6000, dtype=np.int16).reshape(6, 20, 50)\n"
        "d = medcodec.compress(a, max_error=1); medcodec.info(d); medcodec.decompress(d)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == "False"
