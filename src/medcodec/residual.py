"""The residual layer: what bounds every voxel's error around the lossy reconstruction.

With bound ``d`` (``d = 0``: lossless) each voxel's residual against its
prediction is quantized so that the reconstruction is within ``d`` of the
original:

* integer arithmetic: step ``2d + 1``, ``q = floor((x - p + d) / (2d + 1))``;
* float arithmetic: step ``2d``, ``q = round((x - p) / 2d)``; the few voxels that
  float rounding would push past ``d`` are stored verbatim as exceptions (by the
  caller).

Voxels are coded in phases, coarse to fine, in every slice at once (an
interlaced hierarchy in the y-x plane). The base phase, the voxels on a grid of
stride ``2**levels``, is predicted by the lossy reconstruction alone. Each
finer level of stride ``s`` then codes the centres of the known grid's squares
(predicted from their 4 diagonal neighbours at distance ``s/2``) and then the
midpoints of its edges (from their 4 axis neighbours), both already decoded. A
finer voxel's prediction is the lossy reconstruction corrected by the mean
reconstruction error of its decoded neighbours, weighted by a factor the
encoder picks per phase from :data:`WEIGHTS`. Contexts: the base phase uses
the local activity of the lossy reconstruction; finer phases the spread (max -
min) of the decoded neighbours, in quantization steps, on a log2 scale after a
per-phase shift. Every operation is integer arithmetic or IEEE-754 float64
basic arithmetic, so encoder and decoder agree on every machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from .entropy import decode_groups, encode_groups
from .errors import CorruptStreamError, TruncatedStreamError

__all__ = ["LEVELS", "WEIGHTS", "buckets_for", "encode_residual", "decode_residual", "quantize", "dequantize"]

#: Levels of the in-plane hierarchy: the base grid has stride 2**LEVELS.
LEVELS = 3
#: Prediction modes of a finer phase, (a, b, c): ``p = (a * pred + b * mean(recon_n) - c * mean(pred_n)) / 2``
#: with ``a + b - c = 2``: from the lossy reconstruction alone, through it corrected by the
#: neighbours' mean error, to plain interpolation of the decoded neighbours.
WEIGHTS = ((2, 0, 0), (2, 1, 1), (2, 2, 2), (1, 2, 1), (0, 2, 0))
_PHASE_HEAD = struct.Struct("<BBI")


def buckets_for(voxels: int) -> int:
    """Context buckets per phase: fewer for small tiles, where tables cost more."""
    return 10 if voxels >= 1 << 20 else 6 if voxels >= 1 << 15 else 3


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


def _phases(levels: int) -> list[tuple[int, int, int, tuple[tuple[int, int], ...]]]:
    """(stride, y0, x0, neighbour offsets) of each phase after the base, coarse to fine."""
    out = []
    for level in range(levels, 0, -1):
        s, h = 1 << level, 1 << (level - 1)
        diag = ((-h, -h), (-h, h), (h, -h), (h, h))
        axis = ((-h, 0), (h, 0), (0, -h), (0, h))
        out += [(s, h, h, diag), (s, 0, h, axis), (s, h, 0, axis)]
    return out


def _log_bucket(a: np.ndarray, shift: int, n: int) -> np.ndarray:
    a = a >> shift
    ctx = np.zeros(a.shape, dtype=np.int64)
    for k in range(1, n):
        ctx += a >= (1 << (k - 1))
    return ctx


def _activity(o: np.ndarray) -> np.ndarray:
    p = np.pad(o, 1, mode="edge")
    a = np.abs(p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1])
    a += np.abs(p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1])
    a += np.abs(p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2])
    return a


def _shift_for(a: np.ndarray) -> int:
    return max(0, int(np.median(a)).bit_length() - 2) if a.size else 0


class _Phase:
    """One phase's targets, prediction and context, given the voxels decoded so far."""

    def __init__(self, recon: np.ndarray, pred: np.ndarray, ys: np.ndarray, xs: np.ndarray, offsets, integer: bool):
        h, w = recon.shape[1:]
        self.ys, self.xs = ys, xs
        self.pred = pred[:, ys[:, None], xs[None, :]]
        total = np.zeros(self.pred.shape, dtype=np.int64 if integer else np.float64)
        total_pred = np.zeros(self.pred.shape, dtype=np.int64 if integer else np.float64)
        count = np.zeros((len(ys), len(xs)), dtype=np.int64)
        hi_n = lo_n = None
        for dy, dx in offsets:
            vy, vx = (0 <= ys + dy) & (ys + dy < h), (0 <= xs + dx) & (xs + dx < w)
            valid = vy[:, None] & vx[None, :]
            iy, ix = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
            r_n = recon[:, iy[:, None], ix[None, :]]
            total += np.where(valid, r_n, 0)
            total_pred += np.where(valid, pred[:, iy[:, None], ix[None, :]], 0)
            count += valid
            # Spread of the valid neighbours (an invalid one repeats a valid one's value: count >= 1).
            if hi_n is None:
                hi_n, lo_n = r_n.copy(), r_n.copy()
            else:
                hi_n = np.where(valid, np.maximum(hi_n, r_n), hi_n)
                lo_n = np.where(valid, np.minimum(lo_n, r_n), lo_n)
        self.total, self.total_pred, self.count = total, total_pred, np.maximum(count, 1)
        self.spread = hi_n - lo_n
        self.integer = integer

    def predict(self, mode: int) -> np.ndarray:
        a, b, c = WEIGHTS[mode]
        if self.integer:
            return np.floor_divide(a * self.pred * self.count + b * self.total - c * self.total_pred, 2 * self.count)
        return (a * self.pred + (b * self.total - c * self.total_pred) / self.count) / 2.0


def _traverse(
    pred: np.ndarray, o: np.ndarray, d: float, integer: bool, lo: float, hi: float, levels: int,
    code: Callable[[int, np.ndarray, np.ndarray, np.ndarray | _Phase, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:  # fmt: skip
    """Visit the phases in decoding order and return the reconstruction (int64 or float64).

    ``code(k, ys, xs, base_prediction_or_phase, activity)`` returns the phase's symbols and
    the prediction it used; the reconstruction grows phase by phase, as in the decoder.
    """
    recon = np.zeros(pred.shape, dtype=np.int64 if integer else np.float64)
    step = (2 * int(d) + 1) if integer else 2.0 * d
    s = 1 << levels
    ys, xs = np.arange(0, pred.shape[1], s), np.arange(0, pred.shape[2], s)
    base = pred[:, ys[:, None], xs[None, :]]
    q, p = code(0, ys, xs, base, _activity(o)[:, ys[:, None], xs[None, :]])
    recon[:, ys[:, None], xs[None, :]] = dequantize(q, p, d, integer, lo, hi)
    for k, (stride, y0, x0, offsets) in enumerate(_phases(levels), start=1):
        ys, xs = np.arange(y0, pred.shape[1], stride), np.arange(x0, pred.shape[2], stride)
        phase = _Phase(recon, pred, ys, xs, offsets, integer)
        if integer:
            activity = phase.spread // step
        else:
            activity = np.floor(np.minimum(phase.spread / step, 2.0**62)).astype(np.int64)
        q, p = code(k, ys, xs, phase, activity)
        recon[:, ys[:, None], xs[None, :]] = dequantize(q, p, d, integer, lo, hi)
    return recon


def encode_residual(
    x: np.ndarray, pred: np.ndarray, o: np.ndarray, d: float, integer: bool, lo: float, hi: float,
    n_buckets: int, levels: int = LEVELS,
) -> tuple[bytes, np.ndarray]:  # fmt: skip
    """Code ``x`` around ``pred`` within ``d``; returns the residual section and the reconstruction."""
    parts: list[bytes] = []

    def code(k, ys, xs, source, activity):
        xt = x[:, ys[:, None], xs[None, :]]
        if k == 0:
            weight, p = 0, source
        else:
            # The weight that leaves the smallest residuals (a proxy for their bits).
            weight = min(range(len(WEIGHTS)), key=lambda w: np.abs(quantize(xt, source.predict(w), d, integer)).sum())
            p = source.predict(weight)
        q = quantize(xt, p, d, integer)
        shift = _shift_for(activity)
        body = encode_groups(q, _log_bucket(activity, shift, n_buckets), n_buckets)
        parts.append(_PHASE_HEAD.pack(weight, shift, len(body)) + body)
        return q, p

    recon = _traverse(pred, o, d, integer, lo, hi, levels, code)
    return b"".join(parts), recon


def decode_residual(
    data: bytes, pred: np.ndarray, o: np.ndarray, d: float, integer: bool, lo: float, hi: float,
    n_buckets: int, levels: int = LEVELS,
) -> np.ndarray:  # fmt: skip
    """Invert :func:`encode_residual`; returns the reconstruction (int64 or float64)."""
    pos = 0

    def code(k, ys, xs, source, activity):
        nonlocal pos
        if pos + _PHASE_HEAD.size > len(data):
            raise TruncatedStreamError("residual section ends inside a phase header")
        weight, shift, n = _PHASE_HEAD.unpack_from(data, pos)
        start = pos + _PHASE_HEAD.size
        if weight >= len(WEIGHTS) or (k == 0 and weight) or shift > 62 or start + n > len(data):
            raise CorruptStreamError("residual phase header is invalid")
        pos = start + n
        q = decode_groups(data[start:pos], _log_bucket(activity, shift, n_buckets), n_buckets)
        return q, source if k == 0 else source.predict(weight)

    recon = _traverse(pred, o, d, integer, lo, hi, levels, code)
    if pos != len(data):
        raise CorruptStreamError("residual section has trailing bytes")
    return recon
