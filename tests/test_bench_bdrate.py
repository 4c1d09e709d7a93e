"""Bjøntegaard delta rate and rate-at-PSNR on curves with known answers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks.bdrate import bd_rate, psnr_band, psnr_overlap, rate_at_psnr, rd_front  # noqa: E402

PSNR = [30.0, 36.0, 42.0, 48.0, 54.0, 60.0, 66.0, 72.0]
# log10(rate) linear in PSNR: rate x10 every 20 dB
RATE = [0.1 * 10 ** ((p - 30) / 20) for p in PSNR]


def test_identical_curves_give_zero():
    assert bd_rate(RATE, PSNR, RATE, PSNR) == 0.0


def test_half_the_rate_at_every_psnr_gives_minus_50():
    assert bd_rate(RATE, PSNR, [r / 2 for r in RATE], PSNR) == pytest.approx(-50.0)
    assert bd_rate([r / 2 for r in RATE], PSNR, RATE, PSNR) == pytest.approx(100.0)


def test_curve_shifted_by_3_db():
    # The test codec reaches every rate with 3 dB more: log10 R_test(P) = log10 R_ref(P) - 3/20.
    shifted = [p + 3 for p in PSNR]
    expected = (10 ** (-3 / 20) - 1) * 100  # -29.205 %
    assert bd_rate(RATE, PSNR, RATE, shifted) == pytest.approx(expected, abs=1e-6)
    assert psnr_overlap(RATE, PSNR, RATE, shifted) == (35.0, 65.0)


def test_integration_is_clipped_to_35_65_and_to_the_overlap():
    # The test curve only covers 30..48 dB: the overlap is 35..48.
    test_psnr, test_rate = PSNR[:4], [r / 2 for r in RATE[:4]]
    assert psnr_overlap(RATE, PSNR, test_rate, test_psnr) == (35.0, 48.0)
    assert bd_rate(RATE, PSNR, test_rate, test_psnr) == pytest.approx(-50.0)


def test_no_overlap_or_too_few_points_gives_none():
    assert bd_rate(RATE[:3], PSNR[:3], RATE[5:], PSNR[5:]) is None  # 30..42 vs 60..72
    assert bd_rate(RATE, PSNR, RATE[:1], PSNR[:1]) is None
    low = [p - 40 for p in PSNR]  # entirely under 35 dB
    assert bd_rate(RATE, low, RATE, low) is None


def test_points_are_order_independent_and_lossless_points_ignored():
    shuffled = list(zip(RATE, PSNR))[::-1] + [(9.0, math.inf)]
    r, p = zip(*shuffled)
    assert bd_rate(RATE, PSNR, list(r), list(p)) == 0.0


def test_rd_front_drops_dominated_points():
    rates, psnrs = rd_front([1.0, 2.0, 3.0, 2.5], [40.0, 45.0, 44.0, 50.0])
    assert list(rates) == [1.0, 2.0, 2.5] and list(psnrs) == [40.0, 45.0, 50.0]


def test_rate_at_psnr_interpolates_log_rate():
    # On a log-linear curve PCHIP is exact: 45 dB -> 0.1 * 10^(15/20)
    assert rate_at_psnr(RATE, PSNR, 45.0) == pytest.approx(0.1 * 10**0.75)
    assert rate_at_psnr(RATE, PSNR, 48.0) == pytest.approx(RATE[3])
    assert rate_at_psnr(RATE, PSNR, 80.0) is None  # never extrapolated
    assert rate_at_psnr(RATE, PSNR, 20.0) is None


def test_psnr_band_interpolates_the_psnrs_of_a_rate_band():
    # log-rate linear in PSNR: 1 bpv at 30 dB, 4 bpv at 50 dB.
    band = psnr_band([1, 2, 4], [30, 40, 50], (2, 4))
    assert band == pytest.approx((40.0, 50.0))
    assert psnr_band([1, 2, 4], [30, 40, 50], (0.1, 8)) == pytest.approx((30.0, 50.0))  # clipped to the curve
    assert psnr_band([1], [30], (1, 2)) is None
