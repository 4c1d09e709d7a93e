"""The grouped entropy coder: exact round trips, escapes, empty groups, damaged sections."""

from __future__ import annotations

import numpy as np
import pytest

from medcodec import CorruptStreamError, MedcodecError
from medcodec.coding.entropy import MAX_TABLE_WIDTH, decode_groups, encode_groups


def test_round_trip_with_empty_groups_and_escapes():
    rng = np.random.default_rng(1)
    values = np.round(rng.laplace(0, 5, size=(7, 30, 11))).astype(np.int64)
    values[0, 0, 0], values[1, 1, 1] = 10**12, -(10**12)
    values[2, 2, 2] = MAX_TABLE_WIDTH * 3
    groups = rng.integers(0, 6, size=values.shape) * 2  # odd groups are empty
    data = encode_groups(values, groups, 13)
    assert np.array_equal(decode_groups(data, groups, 13), values)


def test_rate_follows_the_distribution():
    rng = np.random.default_rng(2)
    narrow = np.round(rng.laplace(0, 1, 50_000)).astype(np.int64)
    wide = np.round(rng.laplace(0, 50, 50_000)).astype(np.int64)
    groups = np.zeros(50_000, np.int64)
    bits = [8 * len(encode_groups(v, groups, 1)) / v.size for v in (narrow, wide)]
    entropy_narrow = -sum(p * np.log2(p) for p in np.unique(narrow, return_counts=True)[1] / narrow.size)
    assert bits[0] < entropy_narrow + 0.1
    assert bits[1] > bits[0] + 4


def test_damaged_sections_raise():
    values = np.arange(1000, dtype=np.int64) % 17
    groups = np.arange(1000) % 3
    data = encode_groups(values, groups, 3)
    with pytest.raises(MedcodecError):
        decode_groups(data[:-3], groups, 3)
    with pytest.raises(CorruptStreamError):
        decode_groups(data + b"\0", groups, 3)
    with pytest.raises(MedcodecError):
        decode_groups(data, np.arange(1000) % 4, 4)  # groups that differ from the encoder's
