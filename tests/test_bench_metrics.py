"""Arithmetic of the benchmark measures on hand-computed examples."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import metrics  # noqa: E402


def test_bits_per_voxel_and_ratio_by_hand():
    # 200 int16 voxels (400 raw bytes) stored in 100 bytes: 4 bpv, 4:1.
    assert metrics.bits_per_voxel(100, 200) == 4.0
    assert metrics.compression_ratio(400, 100) == 4.0
    # ratio = stored bits per voxel / bpv
    assert metrics.compression_ratio(400, 100) == 16 / metrics.bits_per_voxel(100, 200)


def test_megabytes_per_second():
    assert metrics.megabytes_per_second(2_000_000, 0.5) == 4.0
    assert metrics.megabytes_per_second(1, 0.0) == math.inf


def test_psnr_by_hand():
    original = np.zeros((2, 3, 4), np.int16)
    original[0, 0, 0] = 100  # range 100
    decoded = original + 1  # MSE 1
    assert metrics.mean_squared_error(original, decoded) == 1.0
    assert metrics.psnr(original, decoded) == pytest.approx(40.0)  # 10 log10(100^2 / 1)
    # Error on half the voxels: MSE 2 -> 40 - 10 log10(2)
    decoded2 = original.copy()
    decoded2.flat[:12] += 2
    assert metrics.psnr(original, decoded2) == pytest.approx(40.0 - 10 * math.log10(2))


def test_psnr_uses_the_originals_range_not_the_dtypes():
    original = np.array([[[1000, 1010]]], np.uint16)  # range 10, not 65535
    decoded = original + np.array([[[1, 1]]], np.uint16)
    assert metrics.psnr(original, decoded) == pytest.approx(20.0)


def test_psnr_exact_and_constant():
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert metrics.psnr(a, a.copy()) == math.inf
    const = np.full((2, 2, 2), 7, np.int16)
    assert math.isnan(metrics.psnr(const, const + 1))


def test_integer_extremes_do_not_overflow():
    original = np.array([[[-32768, 32767]]], np.int16)
    decoded = np.array([[[32767, -32768]]], np.int16)
    assert metrics.max_abs_error(original, decoded) == 65535.0
    assert metrics.mean_squared_error(original, decoded) == 65535.0**2
    assert metrics.psnr(original, decoded) == pytest.approx(0.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_ssim_identical_noisy_and_too_thin():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, (8, 16, 16)).astype(np.int16)
    assert metrics.ssim_3d(a, a.copy()) == pytest.approx(1.0)
    noisy = (a + rng.normal(0, 50, a.shape)).astype(np.int16)
    assert 0.0 < metrics.ssim_3d(a, noisy) < 1.0
    assert metrics.ssim_3d(a[:2], noisy[:2]) is None  # no 3-voxel window fits


def test_ssim_region_is_a_central_slab_of_whole_slices():
    assert metrics.ssim_region((10, 20, 20), 10_000) == (slice(0, 10), slice(0, 20), slice(0, 20))
    zs, ys, xs = metrics.ssim_region((100, 64, 64), 64 * 64 * 20)
    assert (zs.start, zs.stop) == (40, 60) and ys == slice(0, 64) and xs == slice(0, 64)
    zs, _, _ = metrics.ssim_region((100, 64, 64), 10)  # never thinner than the 7-voxel window
    assert zs.stop - zs.start == 7


def test_ssim_on_region_uses_the_whole_volumes_range():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 100, (30, 16, 16)).astype(np.int16)
    a[0, 0, 0] = 4000  # outside the central slab: still sets data_range
    b = a.copy()
    b[10:20] += 5
    cropped = metrics.ssim_3d(a, b, max_voxels=10 * 16 * 16)
    expected = metrics.ssim_3d(a[10:20], b[10:20], data_range=4000.0)
    assert cropped == pytest.approx(expected)


def test_peak_memory_sees_a_large_allocation():
    with metrics.PeakMemory() as mem:
        x = np.ones(40_000_000 // 8)  # 40 MB, touched
        del x
    assert mem.peak_bytes >= 30_000_000
    assert metrics.PeakMemory.method in ("rss", "tracemalloc")
