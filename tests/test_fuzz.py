"""Fuzzing in the suite: a short budget of the mutation fuzzer, and property-based round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import medcodec
from medcodec.coding.predictive import tokens, untokens
from medcodec.format.container import Header, read_stream, write_stream
from tests.fuzz import MUTATIONS, fuzz


def test_a_short_fuzz_run_finds_no_crash_and_no_wrong_decode():
    report = fuzz(count=600, seed=1)
    assert report.ok, "\n".join(report.failures)
    assert set(report.by_mutation) == set(MUTATIONS)
    assert report.outcomes["clean refusal"] > 300  # the mutants really are damaged


_PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(st.lists(st.integers(-(2**33), 2**33), min_size=1, max_size=200))
def test_tokens_round_trip_any_symbol(values):
    q = np.array(values, dtype=np.int64)
    tok, nraw, raw = tokens(q)
    assert np.array_equal(untokens(tok, raw), q)


@_PROPERTY
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)),
    spacing=st.tuples(*[st.floats(1e-3, 1e3)] * 3),
    origin=st.tuples(*[st.floats(-1e6, 1e6)] * 3),
    lo=st.integers(-(2**15), 2**15 - 1),
    span=st.integers(0, 2**16 - 1),
)
def test_headers_round_trip_through_the_container(shape, spacing, origin, lo, span):
    hi = min(lo + span, 2**15 - 1)
    header = Header(
        dtype="int16",
        mode="lossless",
        quality=0,
        shape=shape,
        spacing=spacing,
        origin=origin,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        max_error=0.0,
        lo=float(lo),
        hi=float(hi),
        gain_num=1 << 16,
        tile=(64, 256, 256),
        n_tiles=1,
        model_name="",
        model_sha256=bytes(32),
        voxel_sha256=bytes(32),
    )
    back, chunks = read_stream(write_stream(header, []))
    assert back == header and chunks == []


@_PROPERTY
@given(
    a=arrays(
        st.sampled_from([np.uint8, np.int16, np.int32]),
        st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(1, 10)),
    ),
    bound=st.sampled_from([0, 1, 3]),
)
def test_any_small_integer_volume_round_trips_within_its_bound(a, bound):
    out = medcodec.decompress(medcodec.compress(a, max_error=bound)).array
    assert out.dtype == a.dtype and out.shape == a.shape
    assert np.abs(out.astype(np.int64) - a.astype(np.int64)).max() <= bound


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_runs_are_reproducible(seed):
    assert fuzz(count=40, seed=seed).outcomes == fuzz(count=40, seed=seed).outcomes
