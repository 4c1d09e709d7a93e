"""The predictive coder's wavefront loops, compiled with numba.

:mod:`medcodec.coding.predictive` holds the reference: numpy code that computes a whole
wavefront per step. These kernels compute the same integers voxel by voxel
(prediction, coding context, quantization, tokens), so a stream coded by either
decodes the same with either; the tests hold them to that. Everything here is
int64 arithmetic (numpy's wrap-around, floor division and arithmetic shifts), so
it gives the same result on every machine. When numba cannot be imported,
:data:`AVAILABLE` is False and predictive.py runs its numpy loops instead.

Arrays follow predictive.py's ``_Planes``: per slice of a level, padded planes
flattened to one row (``recon``, ``err``, and the z neighbours ``zm``/``zp``),
voxel ``(y, x)`` at ``(y + top) * cols + x + left``. Within a wavefront the
voxels are visited slice by slice, then by increasing ``y``: the reference's
order.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised where numba is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = [
    "AVAILABLE",
    "Geometry",
    "encode_level",
    "front_predict",
    "front_raw_sizes",
    "front_finish",
    "runs",
    "normal_equations",
    "predict_at",
]


class Geometry:
    """The integers every kernel needs about a level's planes, packed in one int64 array.

    ``[h, w, cols, top, left, has_z, lo, hi, d, step, block, blocks_x]``: ``block`` is the
    side of the square regions with weights of their own (0: one region), ``blocks_x`` how many
    of them a row holds.
    """

    H, W, COLS, TOP, LEFT, HAS_Z, LO, HI, D, STEP, BLOCK, BLOCKS_X = range(12)

    @staticmethod
    def pack(
        h: int, w: int, cols: int, top: int, left: int, has_z: bool, lo: int, hi: int, d: int, block: int = 0
    ) -> np.ndarray:
        nbx = -(-w // block) if block else 1
        return np.array([h, w, cols, top, left, int(has_z), lo, hi, d, 2 * d + 1, block, nbx], dtype=np.int64)


def _compiled(fn):
    """``fn`` compiled without the GIL, cached on disk where numba finds a writable place."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location (a read-only installation)
        return njit(nogil=True)(fn)


if AVAILABLE:
    from .predictive import (
        C_SCALE,
        DIRECT_BITS,
        ERR_LIMIT,
        INPLANE,
        MANTISSA_BITS,
        N_CLASSES,
        N_ERR_CONTEXT,
        N_FEEDBACK,
        N_MAGNITUDES,
        N_ORIENT,
        THRESHOLDS,
        W_SCALE,
        ZNEIGHBOURS,
    )

    _N_IN, _N_Z, _N_CLASSES = len(INPLANE), len(ZNEIGHBOURS), N_CLASSES
    _THR = THRESHOLDS.astype(np.int64)
    _ROUND = 1 << (W_SCALE - 1)

    @_compiled
    def _voxel(recon, err, zm, zp, b, p, off, zoff, g, weights, act_thr, ctx_w):
        """Prediction and coding context at padded position ``p`` of slice ``b``."""
        lo, hi, step = g[6], g[7], g[9]
        r = recon[b]
        w_, n_, nw, ne = r[p + off[0]], r[p + off[1]], r[p + off[2]], r[p + off[3]]
        ww, nn = r[p + off[4]], r[p + off[5]]
        dh = abs(w_ - ww) + abs(n_ - nw) + abs(n_ - ne)
        dv = abs(w_ - nw) + abs(n_ - nn)
        has_z = g[5] != 0
        dz = 0
        if has_z:
            a, c = zm[b, p + zoff[0]], zp[b, p + zoff[0]]
            base = (a + c) >> 1
            dz = abs(a - c)
        else:
            base = (w_ + n_) >> 1
        act = dh + dv + dz
        k = 0
        while k < act_thr.size and act_thr[k] <= act:
            k += 1
        orient = 1 if 2 * dh > 3 * dv else (2 if 2 * dv > 3 * dh else 0)
        region = 0
        if g[10]:
            # Clamped: the encoder's fit also predicts at padded positions beside the plane.
            ry = min(max(p // g[2] - g[3], 0), g[0] - 1) // g[10]
            region = ry * g[11] + min(max(p % g[2] - g[4], 0), g[1] - 1) // g[10]
        wrow = weights[region * _N_CLASSES + k * N_ORIENT + orient]
        s = 0
        for j in range(_N_IN):
            s += (r[p + off[j]] - base) * wrow[j]
        j0 = _N_IN
        if has_z:
            for j in range(_N_Z):
                s += (zm[b, p + zoff[j]] - base) * wrow[j0 + j]
            for j in range(_N_Z):
                s += (zp[b, p + zoff[j]] - base) * wrow[j0 + _N_Z + j]
            j0 += 2 * _N_Z
        e = err[b]
        for j in range(N_FEEDBACK):
            s += e[p + off[j]] * wrow[j0 + j]
        pred = min(max(base + ((s + _ROUND) >> W_SCALE), lo), hi)
        if has_z:
            ctx = dh * ctx_w[0] + dv * ctx_w[1] + dz * ctx_w[2]
            c0 = 3
        else:
            ctx = dh * ctx_w[0] + dv * ctx_w[1]
            c0 = 2
        for j in range(N_ERR_CONTEXT):
            ctx += abs(e[p + off[j]]) * ctx_w[c0 + j]
        ctx >>= C_SCALE
        m = 0
        while m < _THR.size and _THR[m] <= ctx:
            m += 1
        gap = (pred - lo) // step
        edge = 1 if gap == 0 else (2 if gap == 1 else (3 if gap <= 3 else 0))
        return pred, m + N_MAGNITUDES * edge

    @_compiled
    def _store(recon, err, b, p, pred, q, g):
        recon[b, p] = min(max(pred + q * g[9], g[6]), g[7])
        err[b, p] = min(max(q, -ERR_LIMIT), ERR_LIMIT)

    @_compiled
    def _front_rows(t, g):
        h, w = g[0], g[1]
        return max(0, -(-(t - w + 1) // 2)), min(h - 1, t // 2)

    @_compiled
    def _token(q):
        """(token, raw-bit count, raw bits) of a signed symbol: predictive.tokens for one value."""
        u = 2 * q if q >= 0 else -2 * q - 1
        if u >> DIRECT_BITS == 0:
            return u, 0, 0
        e = 0
        v = u
        while v > 1:
            v >>= 1
            e += 1
        nraw = e - MANTISSA_BITS
        tok = (1 << DIRECT_BITS) + ((e - DIRECT_BITS) << MANTISSA_BITS) + ((u >> nraw) & ((1 << MANTISSA_BITS) - 1))
        return tok, nraw, u & ((1 << nraw) - 1)

    @_compiled
    def _raw_count(tok):
        if tok < 1 << DIRECT_BITS:
            return 0
        return ((tok - (1 << DIRECT_BITS)) >> MANTISSA_BITS) + DIRECT_BITS - MANTISSA_BITS

    @_compiled
    def encode_level(xt, recon, err, zm, zp, off, zoff, g, weights, act_thr, ctx_w, bucket, tok, nraw, raw, counts):
        """Code a whole level: the symbols of every voxel in coding order, and their token counts.

        ``xt`` holds the level's original voxels (B, h, w); ``bucket``/``tok``/``nraw``/``raw``
        receive one entry per voxel, ``counts[bucket, tok]`` is incremented.
        """
        n_slices, h, w = xt.shape
        cols, top, left, d, step = g[2], g[3], g[4], g[8], g[9]
        i = 0
        for t in range(2 * (h - 1) + w):
            y0, y1 = _front_rows(t, g)
            for b in range(n_slices):
                for y in range(y0, y1 + 1):
                    x = t - 2 * y
                    p = (y + top) * cols + x + left
                    pred, bk = _voxel(recon, err, zm, zp, b, p, off, zoff, g, weights, act_thr, ctx_w)
                    q = (xt[b, y, x] - pred + d) // step
                    _store(recon, err, b, p, pred, q, g)
                    tk, nr, rw = _token(q)
                    bucket[i], tok[i], nraw[i], raw[i] = bk, tk, nr, rw
                    counts[bk, tk] += 1
                    i += 1

    @_compiled
    def runs(bucket, tok, nraw, raw, front_sizes, n_buckets):
        """A level's symbols in stream order: per front, tokens grouped by bucket, then raw parts.

        Returns the tokens so grouped, the runs ``(bucket, length)`` and the number of runs of
        each front, and the raw parts: low parts (values, bit counts), high parts, and how many
        of each every front has (cumulative).
        """
        n = tok.size
        sorted_tok = np.empty(n, np.uint8)
        run_bucket = np.empty(n, np.int64)
        run_len = np.empty(n, np.int64)
        front_runs = np.zeros(front_sizes.size, np.int64)
        lo_vals, lo_bits = np.empty(n, np.uint16), np.empty(n, np.uint8)
        hi_vals, hi_bits = np.empty(n, np.uint16), np.empty(n, np.uint8)
        front_lo, front_hi = np.zeros(front_sizes.size, np.int64), np.zeros(front_sizes.size, np.int64)
        sizes = np.zeros(n_buckets, np.int64)
        start = np.zeros(n_buckets, np.int64)
        a, nr_runs, nl, nh = 0, 0, 0, 0
        for f in range(front_sizes.size):
            m = front_sizes[f]
            sizes[:] = 0
            for i in range(a, a + m):
                sizes[np.int64(bucket[i])] += 1
            s = a
            for k in range(n_buckets):
                start[k] = s
                if sizes[k]:
                    run_bucket[nr_runs], run_len[nr_runs] = k, sizes[k]
                    nr_runs += 1
                    front_runs[f] += 1
                s += sizes[k]
            for i in range(a, a + m):
                k = np.int64(bucket[i])
                sorted_tok[start[k]] = tok[i]
                start[k] += 1
            for i in range(a, a + m):
                nr = np.int64(nraw[i])
                if nr > 0:
                    bits = min(nr, 16)
                    lo_vals[nl], lo_bits[nl] = np.int64(raw[i]) & ((1 << bits) - 1), bits
                    nl += 1
            for i in range(a, a + m):
                nr = np.int64(nraw[i])
                if nr > 16:
                    hi_vals[nh], hi_bits[nh] = np.int64(raw[i]) >> 16, min(nr - 16, 16)
                    nh += 1
            front_lo[f] = nl
            front_hi[f] = nh
            a += m
        # Copies, so that the callers keep only what is used.
        return (
            sorted_tok,
            run_bucket[:nr_runs].astype(np.uint8),
            run_len[:nr_runs].copy(),
            front_runs,
            lo_vals[:nl].copy(),
            lo_bits[:nl].copy(),
            front_lo,
            hi_vals[:nh].copy(),
            hi_bits[:nh].copy(),
            front_hi,
        )

    @_compiled
    def front_predict(t, recon, err, zm, zp, off, zoff, g, weights, act_thr, ctx_w, pred, order, sizes):
        """Predict wavefront ``t`` of every slice; ``order`` groups its voxels by bucket (stable),
        ``sizes`` counts them per bucket. Returns the number of voxels."""
        n_slices = recon.shape[0]
        cols, top, left = g[2], g[3], g[4]
        y0, y1 = _front_rows(t, g)
        n = y1 - y0 + 1
        bucket = np.empty(n_slices * n, np.int64)
        sizes[:] = 0
        i = 0
        for b in range(n_slices):
            for y in range(y0, y1 + 1):
                p = (y + top) * cols + t - 2 * y + left
                pred[i], bucket[i] = _voxel(recon, err, zm, zp, b, p, off, zoff, g, weights, act_thr, ctx_w)
                sizes[bucket[i]] += 1
                i += 1
        s = 0
        start = np.empty(sizes.size, np.int64)
        for k in range(sizes.size):
            start[k] = s
            s += sizes[k]
        for i in range(n_slices * n):
            order[start[bucket[i]]] = i
            start[bucket[i]] += 1
        return n_slices * n

    @_compiled
    def front_raw_sizes(sorted_tok, order, n, tok, lo_sizes, hi_sizes):
        """Put a front's tokens back in voxel order; the uniform sizes of its raw parts.

        Returns how many low and high parts there are."""
        for i in range(n):
            tok[order[i]] = sorted_tok[i]
        nl, nh = 0, 0
        for i in range(n):
            nr = _raw_count(tok[i])
            if nr > 0:
                lo_sizes[nl] = 1 << min(nr, 16)
                nl += 1
                if nr > 16:
                    hi_sizes[nh] = 1 << min(nr - 16, 16)
                    nh += 1
        return nl, nh

    @_compiled
    def front_finish(t, tok, lo_vals, hi_vals, pred, recon, err, g):
        """Rebuild wavefront ``t``'s symbols from tokens and raw parts; store its voxels and residuals."""
        n_slices = recon.shape[0]
        cols, top, left = g[2], g[3], g[4]
        y0, y1 = _front_rows(t, g)
        i, il, ih = 0, 0, 0
        for b in range(n_slices):
            for y in range(y0, y1 + 1):
                tk = np.int64(tok[i])
                nr = _raw_count(tk)
                if nr > 0:
                    rw = np.int64(lo_vals[il])
                    il += 1
                    if nr > 16:
                        rw |= np.int64(hi_vals[ih]) << 16
                        ih += 1
                    top_bits = (1 << MANTISSA_BITS) + ((tk - (1 << DIRECT_BITS)) & ((1 << MANTISSA_BITS) - 1))
                    u = (top_bits << nr) | rw
                else:
                    u = tk
                q = -((u + 1) >> 1) if u & 1 else u >> 1
                p = (y + top) * cols + t - 2 * y + left
                _store(recon, err, b, p, pred[i], q, g)
                i += 1

    @_compiled
    def predict_at(recon, err, zm, zp, pos, off, zoff, g, weights, act_thr, ctx_w, pred):
        """Predictions at padded positions ``pos`` of every slice (``pred`` is (B, n)): what
        predictive's ``_Planes.predict`` computes, for the encoder's fit."""
        for b in range(recon.shape[0]):
            for i in range(pos.size):
                pred[b, i] = _voxel(recon, err, zm, zp, b, pos[i], off, zoff, g, weights, act_thr, ctx_w)[0]

    @_compiled
    def normal_equations(f, target, cls, n_classes):
        """predictive._normal_equations in one pass: exact int64 sums per class, then all."""
        n, k = f.shape
        gram = np.zeros((n_classes + 1, k, k), np.int64)
        rhs = np.zeros((n_classes + 1, k), np.int64)
        sizes = np.zeros(n_classes + 1, np.int64)
        for s in range(n):
            c = cls[s]
            sizes[c] += 1
            for i in range(k):
                fi = f[s, i]
                rhs[c, i] += fi * target[s]
                for j in range(i, k):
                    gram[c, i, j] += fi * f[s, j]
        for c in range(n_classes):
            for i in range(k):
                for j in range(i + 1, k):
                    gram[c, j, i] = gram[c, i, j]
        for c in range(n_classes):
            sizes[n_classes] += sizes[c]
            for i in range(k):
                rhs[n_classes, i] += rhs[c, i]
                for j in range(k):
                    gram[n_classes, i, j] += gram[c, i, j]
        return gram, rhs, sizes
