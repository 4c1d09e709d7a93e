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

from ..errors import CorruptStreamError, TruncatedStreamError
from .entropy import decode_groups, encode_groups

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
    return np.round((x.astype(np.float64) - pred) / _float_step(d)).astype(np.int64)


def dequantize(q: np.ndarray, pred: np.ndarray, d: float, integer: bool, lo: float, hi: float) -> np.ndarray:
    """Reconstruction from the prediction and ``q``, clamped to the volume's [lo, hi]."""
    if integer:
        return np.clip(pred + q * (2 * int(d) + 1), int(lo), int(hi))
    return np.clip(pred + q.astype(np.float64) * _float_step(d), float(lo), float(hi))


def _float_step(d: float) -> float:
    # d = 0 with float arithmetic only arises for a constant volume (lossy bound of a zero
    # range), whose residuals are all zero: any step codes it exactly.
    return 2.0 * d if d > 0 else 1.0


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
    """Bucket ``k`` counts the thresholds 1, 2, 4, ..., 2**(n-2) that ``a >> shift`` reaches."""
    thresholds = np.array([1 << (k - 1) for k in range(1, n)], dtype=np.int64)
    return np.searchsorted(thresholds, a >> shift, side="right").astype(np.int64)


def _base_activity(o: np.ndarray, s: int) -> np.ndarray:
    """Local activity of ``o`` (sum of absolute central differences along z, y, x) on the stride-``s`` grid."""
    p = np.pad(o, 1, mode="edge")

    def at(dz: int, dy: int, dx: int) -> np.ndarray:
        return p[1 + dz : p.shape[0] - 1 + dz, 1 + dy : p.shape[1] - 1 + dy : s, 1 + dx : p.shape[2] - 1 + dx : s]

    return np.abs(at(1, 0, 0) - at(-1, 0, 0)) + np.abs(at(0, 1, 0) - at(0, -1, 0)) + np.abs(at(0, 0, 1) - at(0, 0, -1))


def _shift_for(a: np.ndarray) -> int:
    return max(0, int(np.median(a)).bit_length() - 2) if a.size else 0


def _valid_range(start: int, offset: int, stride: int, count: int, size: int) -> tuple[int, int]:
    """Targets ``k`` in [lo, hi) whose neighbour ``start + offset + k * stride`` lies in [0, size)."""
    first = start + offset
    lo = 0 if first >= 0 else -(first // stride)
    hi = min(count, -(-(size - first) // stride)) if size > first else 0
    return lo, max(lo, hi)


class _Phase:
    """One phase's targets, prediction inputs and context, given the voxels decoded so far."""

    def __init__(self, recon: np.ndarray, pred: np.ndarray, stride: int, y0: int, x0: int, offsets, integer: bool):
        _, h, w = recon.shape
        self.sel = (slice(None), slice(y0, None, stride), slice(x0, None, stride))
        self.pred = pred[self.sel]
        shape = self.pred.shape
        dtype = np.int64 if integer else np.float64
        total, total_pred = np.zeros(shape, dtype), np.zeros(shape, dtype)
        count = np.zeros(shape[1:], dtype=np.int64)
        big = np.iinfo(np.int64).max if integer else np.inf
        hi_n, lo_n = np.full(shape, -big, dtype), np.full(shape, big, dtype)
        for dy, dx in offsets:
            ky = _valid_range(y0, dy, stride, shape[1], h)
            kx = _valid_range(x0, dx, stride, shape[2], w)
            if ky[0] == ky[1] or kx[0] == kx[1]:
                continue
            src = (
                slice(None),
                slice(y0 + dy + ky[0] * stride, y0 + dy + (ky[1] - 1) * stride + 1, stride),
                slice(x0 + dx + kx[0] * stride, x0 + dx + (kx[1] - 1) * stride + 1, stride),
            )
            dst = (slice(None), slice(*ky), slice(*kx))
            r_n = recon[src]
            total[dst] += r_n
            total_pred[dst] += pred[src]
            count[dst[1:]] += 1
            np.maximum(hi_n[dst], r_n, out=hi_n[dst])
            np.minimum(lo_n[dst], r_n, out=lo_n[dst])
        self.total, self.total_pred, self.count = total, total_pred, np.maximum(count, 1)
        self.spread = hi_n - lo_n
        self.integer = integer

    def predict(self, mode: int, z: slice = slice(None)) -> np.ndarray:
        """Prediction of the targets with a mode of :data:`WEIGHTS` (on slices ``z`` only, if given)."""
        a, b, c = WEIGHTS[mode]
        pred, total, total_pred = self.pred[z], self.total[z], self.total_pred[z]
        if self.integer:
            return np.floor_divide(a * pred * self.count + b * total - c * total_pred, 2 * self.count)
        return (a * pred + (b * total - c * total_pred) / self.count) / 2.0


def _traverse(
    pred: np.ndarray,
    o: np.ndarray,
    d: float,
    integer: bool,
    lo: float,
    hi: float,
    levels: int,
    code: Callable[[int, tuple, np.ndarray | _Phase, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Visit the phases in decoding order and return the reconstruction (int64 or float64).

    ``code(k, targets, base_prediction_or_phase, activity)`` returns the phase's symbols and
    the prediction it used; the reconstruction grows phase by phase, as in the decoder.
    """
    recon = np.zeros(pred.shape, dtype=np.int64 if integer else np.float64)
    step = (2 * int(d) + 1) if integer else _float_step(d)
    s = 1 << levels
    sel = (slice(None), slice(0, None, s), slice(0, None, s))
    q, p = code(0, sel, pred[sel], _base_activity(o, s))
    recon[sel] = dequantize(q, p, d, integer, lo, hi)
    for k, (stride, y0, x0, offsets) in enumerate(_phases(levels), start=1):
        phase = _Phase(recon, pred, stride, y0, x0, offsets, integer)
        if phase.pred.size == 0:
            continue
        if integer:
            activity = phase.spread // step
        else:
            activity = np.floor(np.minimum(phase.spread / step, 2.0**62)).astype(np.int64)
        q, p = code(k, phase.sel, phase, activity)
        recon[phase.sel] = dequantize(q, p, d, integer, lo, hi)
    return recon


def encode_residual(
    x: np.ndarray,
    pred: np.ndarray,
    o: np.ndarray,
    d: float,
    integer: bool,
    lo: float,
    hi: float,
    n_buckets: int,
    levels: int = LEVELS,
) -> tuple[bytes, np.ndarray]:
    """Code ``x`` around ``pred`` within ``d``; returns the residual section and the reconstruction."""
    parts: list[bytes] = []

    def code(k, sel, source, activity):
        xt = x[sel]
        if k == 0:
            weight, p = 0, source
        else:
            # The mode that leaves the smallest residuals (a proxy for their bits), judged on
            # every fourth slice to save time.
            z = slice(None, None, 4)
            weight = min(
                range(len(WEIGHTS)), key=lambda w: np.abs(quantize(xt[z], source.predict(w, z), d, integer)).sum()
            )
            p = source.predict(weight)
        q = quantize(xt, p, d, integer)
        shift = _shift_for(activity)
        body = encode_groups(q, _log_bucket(activity, shift, n_buckets), n_buckets)
        parts.append(_PHASE_HEAD.pack(weight, shift, len(body)) + body)
        return q, p

    recon = _traverse(pred, o, d, integer, lo, hi, levels, code)
    return b"".join(parts), recon


def decode_residual(
    data: bytes,
    pred: np.ndarray,
    o: np.ndarray,
    d: float,
    integer: bool,
    lo: float,
    hi: float,
    n_buckets: int,
    levels: int = LEVELS,
) -> np.ndarray:
    """Invert :func:`encode_residual`; returns the reconstruction (int64 or float64)."""
    pos = 0

    def code(k, sel, source, activity):
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
