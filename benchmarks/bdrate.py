"""Bjøntegaard delta rate and rate-at-PSNR interpolation.

Both work on log-rate as a function of PSNR, interpolated piecewise-cubically with PCHIP
(shape-preserving, no overshoot between points: the variant of Bjøntegaard's metric used
by JVET/AOM since the classic cubic polynomial fit misbehaves on curves with many points).
Before interpolation each curve is reduced to its Pareto front (a setting that costs more
bits for a lower PSNR than another is never the one an encoder would pick).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["PSNR_RANGE", "bd_rate", "psnr_overlap", "rate_at_psnr", "rd_front"]

#: BD-rate integrates over the two curves' PSNR overlap clipped to this range (dB).
PSNR_RANGE: tuple[float, float] = (35.0, 65.0)


def rd_front(rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto front of an RD curve, sorted by PSNR.

    Args:
        rates: Rates (bpv), positive.
        psnrs: PSNRs (dB); infinite or nan points (lossless, failures) are dropped.

    Returns:
        (rates, psnrs) with both strictly increasing.
    """
    pts = sorted((float(r), float(p)) for r, p in zip(rates, psnrs) if math.isfinite(p) and math.isfinite(r) and r > 0)
    front: list[tuple[float, float]] = []
    for r, p in pts:  # ascending rate: keep a point only if it beats every cheaper one
        if not front or p > front[-1][1]:
            if front and r == front[-1][0]:
                front.pop()
            front.append((r, p))
    return np.array([r for r, _ in front]), np.array([p for _, p in front])


def _log_rate_of_psnr(rates: Sequence[float], psnrs: Sequence[float]) -> PchipInterpolator | None:
    r, p = rd_front(rates, psnrs)
    if len(r) < 2:
        return None
    return PchipInterpolator(p, np.log(r), extrapolate=False)


def rate_at_psnr(rates: Sequence[float], psnrs: Sequence[float], target: float) -> float | None:
    """Rate needed for ``target`` dB, interpolated on the curve; None outside its PSNR span."""
    f = _log_rate_of_psnr(rates, psnrs)
    if f is None:
        return None
    lo, hi = f.x[0], f.x[-1]
    if not lo <= target <= hi:
        return None
    return float(np.exp(f(target)))


def psnr_band(
    rates: Sequence[float], psnrs: Sequence[float], rate_band: tuple[float, float]
) -> tuple[float, float] | None:
    """The PSNR interval over which a curve spends between ``rate_band`` bpv (interpolated on its
    Pareto front, clipped to the PSNRs it reaches), or None when it has under 2 points."""
    r, p = rd_front(rates, psnrs)
    if len(r) < 2:
        return None
    lr = np.log(r)
    lo, hi = (float(np.interp(np.log(b), lr, p)) for b in rate_band)
    return (lo, hi) if hi > lo else None


def psnr_overlap(
    ref_rates: Sequence[float],
    ref_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
    psnr_range: tuple[float, float] = PSNR_RANGE,
) -> tuple[float, float] | None:
    """The PSNR interval :func:`bd_rate` integrates over, or None when there is none."""
    _, p_ref = rd_front(ref_rates, ref_psnrs)
    _, p_test = rd_front(test_rates, test_psnrs)
    if len(p_ref) < 2 or len(p_test) < 2:
        return None
    lo = max(psnr_range[0], p_ref[0], p_test[0])
    hi = min(psnr_range[1], p_ref[-1], p_test[-1])
    return (float(lo), float(hi)) if hi > lo else None


def bd_rate(
    ref_rates: Sequence[float],
    ref_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
    psnr_range: tuple[float, float] = PSNR_RANGE,
) -> float | None:
    """Bjøntegaard delta rate of a test curve against a reference curve, in percent.

    The mean difference of log-rate at equal PSNR over the curves' PSNR overlap
    (clipped to ``psnr_range``), turned back into a rate ratio: negative means the
    test codec needs that many percent fewer bits for the same PSNR.

    Args:
        ref_rates: Reference curve rates (bpv).
        ref_psnrs: Reference curve PSNRs (dB).
        test_rates: Test curve rates.
        test_psnrs: Test curve PSNRs.
        psnr_range: Integration is clipped to this range.

    Returns:
        Percent rate difference, or None when a curve has under 2 usable points or the
        overlap inside ``psnr_range`` is empty.

    Example:
        >>> bd_rate([1, 2, 4], [30, 40, 50], [0.5, 1, 2], [30, 40, 50], (30, 50))
        -50.0
    """
    f_ref = _log_rate_of_psnr(ref_rates, ref_psnrs)
    f_test = _log_rate_of_psnr(test_rates, test_psnrs)
    span = psnr_overlap(ref_rates, ref_psnrs, test_rates, test_psnrs, psnr_range)
    if f_ref is None or f_test is None or span is None:
        return None
    lo, hi = span
    mean_diff = (f_test.integrate(lo, hi) - f_ref.integrate(lo, hi)) / (hi - lo)
    # Rounded so that exact cases (identical, halved curves) print as 0.0 and -50.0.
    return round(float(math.expm1(mean_diff)) * 100.0, 10)
