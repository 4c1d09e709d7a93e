"""The residual layer: what turns the lossy reconstruction into a near-lossless or lossless one.

With bound ``d`` (``d = 0``: lossless) the residual ``r = x - prediction`` is
quantized so that every reconstructed voxel is within ``d`` of the original:

* integer volumes: step ``2d + 1``, ``q = floor((r + d) / (2d + 1))``;
* float volumes: step ``2d``, ``q = round(r / 2d)``; the few voxels that float
  rounding would push past ``d`` are stored verbatim as exceptions.

``q`` is entropy-coded in groups chosen by a context that the decoder computes
from the prediction alone: the local activity (sum of absolute central
differences along z, y and x) of the fixed-point network output, bucketed on a
log2 scale after a per-tile shift chosen by the encoder.
"""

from __future__ import annotations

import numpy as np

__all__ = ["activity_contexts", "choose_shift", "quantize", "dequantize", "buckets_for"]


def _activity(o: np.ndarray) -> np.ndarray:
    p = np.pad(o, 1, mode="edge")
    c = p[1:-1, 1:-1, 1:-1]
    a = np.abs(p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1])
    a += np.abs(p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1])
    a += np.abs(p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2])
    del c
    return a


def buckets_for(voxels: int) -> int:
    """Number of context buckets for a tile: fewer for small tiles, where tables cost more."""
    return 12 if voxels >= 1 << 18 else 8 if voxels >= 1 << 14 else 4


def choose_shift(o: np.ndarray) -> int:
    """Per-tile shift that spreads the activity of ``o`` across the buckets."""
    med = int(np.median(_activity(o)))
    return max(0, med.bit_length() - 3)


def activity_contexts(o: np.ndarray, shift: int, n_buckets: int) -> np.ndarray:
    """Context bucket (0 .. n_buckets-1) of every voxel, from the fixed-point prediction ``o``."""
    a = _activity(o) >> shift
    # bit_length on a log2 scale, computed with integer comparisons only
    ctx = np.zeros(a.shape, dtype=np.int64)
    for k in range(1, n_buckets):
        ctx += a >= (1 << (k - 1))
    return ctx


def quantize(x: np.ndarray, pred: np.ndarray, d: float, integer: bool) -> np.ndarray:
    """Quantized residual symbols ``q`` (int64)."""
    if integer:
        step = 2 * int(d) + 1
        return np.floor_divide(x.astype(np.int64) - pred + int(d), step)
    return np.round((x.astype(np.float64) - pred) / (2.0 * d)).astype(np.int64)


def dequantize(q: np.ndarray, pred: np.ndarray, d: float, integer: bool, lo: float, hi: float) -> np.ndarray:
    """Reconstruction from the prediction and ``q``, clamped to the volume's [lo, hi]."""
    if integer:
        return np.clip(pred + q * (2 * int(d) + 1), int(lo), int(hi))
    return np.clip(pred + q.astype(np.float64) * (2.0 * d), float(lo), float(hi))
