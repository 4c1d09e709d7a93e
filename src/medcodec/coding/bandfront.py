"""The transform coder's per-front loops, compiled with numba.

:class:`medcodec.coding.coefficients.BandCoder` holds the reference: numpy code that computes a
whole front's contexts per step. These kernels compute the same integers coefficient by
coefficient (contexts, the order in which a front's symbols are read, magnitudes and
signs), so the decoder reads the same symbols either way; the tests hold them to that.
When numba cannot be imported, :data:`AVAILABLE` is False and the transform coder runs the
numpy reference instead.
"""

from __future__ import annotations

import numpy as np

from .wavefront import AVAILABLE

if AVAILABLE:
    from .wavefront import _compiled

__all__ = ["AVAILABLE", "front_contexts", "front_raw_sizes", "front_magnitudes", "front_store", "band_runs"]


if AVAILABLE:

    @_compiled
    def front_contexts(
        idx, flat, mag, sign, off, external, weights, thresholds, c_scale, limit, bucket, sctx, order, sizes
    ):
        """Bucket and sign context of each coefficient of a front, and the front's positions
        grouped by bucket (stable): ``order[:n]`` and the group ``sizes``."""
        n = idx.size
        m = mag.ravel()
        s = sign.ravel()
        k_n = off.size
        n_buckets = sizes.size
        for b in range(n_buckets):
            sizes[b] = 0
        for j in range(n):
            i = idx[j]
            pos = flat[i]
            est = np.int64(0)
            for k in range(k_n):
                est += weights[k] * min(m[pos + off[k]], limit)
            est += weights[k_n] * external[0, i] + weights[k_n + 1] * external[1, i]
            v = est >> c_scale
            b = 0
            while b < thresholds.size and thresholds[b] <= v:
                b += 1
            bucket[j] = b
            sizes[b] += 1
            sctx[j] = 3 * (s[pos + off[0]] + 1) + (s[pos + off[1]] + 1)
        start = np.zeros(n_buckets, np.int64)
        acc = 0
        for b in range(n_buckets):
            start[b] = acc
            acc += sizes[b]
        for j in range(n):
            b = bucket[j]
            order[start[b]] = j
            start[b] += 1

    @_compiled
    def front_raw_sizes(sym, order, n, tok, lo_sizes, hi_sizes, direct_bits, mantissa_bits):
        """Scatter the bucket-grouped tokens ``sym`` to front order in ``tok``; the uniform sizes of
        their raw parts, low (at most 16 bits) then high. Returns the two counts."""
        for j in range(n):
            tok[order[j]] = sym[j]
        n_lo = 0
        n_hi = 0
        for j in range(n):
            t = tok[j]
            if t >= 1 << direct_bits:
                nraw = ((t - (1 << direct_bits)) >> mantissa_bits) + direct_bits - mantissa_bits
                lo_sizes[n_lo] = 1 << min(nraw, 16)
                n_lo += 1
                if nraw > 16:
                    hi_sizes[n_hi] = 1 << (nraw - 16)
                    n_hi += 1
        return n_lo, n_hi

    @_compiled
    def front_magnitudes(n, tok, lo_vals, hi_vals, sctx, direct_bits, mantissa_bits, mags, sign_order, sign_sizes):
        """Magnitudes from tokens and raw parts; the nonzero ones grouped by sign context (stable).
        Returns how many are nonzero."""
        a = 0
        b = 0
        n_ctx = sign_sizes.size
        for c in range(n_ctx):
            sign_sizes[c] = 0
        nz = 0
        for j in range(n):
            t = tok[j]
            if t >= 1 << direct_bits:
                nraw = ((t - (1 << direct_bits)) >> mantissa_bits) + direct_bits - mantissa_bits
                r = np.int64(lo_vals[a])
                a += 1
                if nraw > 16:
                    r |= np.int64(hi_vals[b]) << 16
                    b += 1
                top = (1 << mantissa_bits) + ((t - (1 << direct_bits)) & ((1 << mantissa_bits) - 1))
                mags[j] = (np.int64(top) << nraw) | r
            else:
                mags[j] = t
            if mags[j] > 0:
                sign_sizes[sctx[j]] += 1
                nz += 1
        start = np.zeros(n_ctx, np.int64)
        acc = 0
        for c in range(n_ctx):
            start[c] = acc
            acc += sign_sizes[c]
        for j in range(n):
            if mags[j] > 0:
                c = sctx[j]
                sign_order[start[c]] = j
                start[c] += 1
        return nz

    @_compiled
    def front_store(idx, flat, n, mags, neg, sign_order, nz, mag, sign):
        """Write a front's magnitudes and signs (``neg`` in sign-context order) into the band's planes."""
        m = mag.ravel()
        s = sign.ravel()
        for j in range(n):
            pos = flat[idx[j]]
            m[pos] = mags[j]
            s[pos] = 0
        for k in range(nz):
            j = sign_order[k]
            s[flat[idx[j]]] = 1 - 2 * np.int64(neg[k])

    @_compiled
    def band_runs(order, bounds, bucket, sctx, tok, nraw, raw, neg, n_buckets, n_ctx):
        """The encoder's symbols of a band in the decoder's reading order, front by front: tokens
        grouped by bucket (runs of one bucket), raw parts (low then high), signs grouped by context."""
        n = order.size
        n_fronts = bounds.size - 1
        tok_sym = np.empty(n, np.int32)
        run_key = np.empty(n, np.int64)
        run_len = np.empty(n, np.int64)
        front_runs = np.zeros(n_fronts, np.int64)
        lo_v = np.empty(n, np.uint16)
        lo_b = np.empty(n, np.uint8)
        hi_v = np.empty(n, np.uint16)
        hi_b = np.empty(n, np.uint8)
        front_lo = np.zeros(n_fronts, np.int64)
        front_hi = np.zeros(n_fronts, np.int64)
        sgn = np.empty(n, np.int32)
        srun_key = np.empty(n, np.int64)
        srun_len = np.empty(n, np.int64)
        front_sruns = np.zeros(n_fronts, np.int64)
        count = np.zeros(max(n_buckets, n_ctx), np.int64)
        start = np.zeros(max(n_buckets, n_ctx), np.int64)
        at = 0
        runs = 0
        n_lo = 0
        n_hi = 0
        s_at = 0
        sruns = 0
        for f in range(n_fronts):
            a, b = bounds[f], bounds[f + 1]
            for k in range(n_buckets):
                count[k] = 0
            for j in range(a, b):
                count[bucket[order[j]]] += 1
            acc = at
            for k in range(n_buckets):
                start[k] = acc
                if count[k]:
                    run_key[runs] = k
                    run_len[runs] = count[k]
                    runs += 1
                    front_runs[f] += 1
                acc += count[k]
            for j in range(a, b):
                i = order[j]
                k = bucket[i]
                tok_sym[start[k]] = tok[i]
                start[k] += 1
            at += b - a
            for j in range(a, b):
                i = order[j]
                if nraw[i] > 0:
                    lo_v[n_lo] = raw[i] & ((1 << min(nraw[i], 16)) - 1)
                    lo_b[n_lo] = min(nraw[i], 16)
                    n_lo += 1
            for j in range(a, b):
                i = order[j]
                if nraw[i] > 16:
                    hi_v[n_hi] = raw[i] >> 16
                    hi_b[n_hi] = nraw[i] - 16
                    n_hi += 1
            front_lo[f] = n_lo
            front_hi[f] = n_hi
            for c in range(n_ctx):
                count[c] = 0
            m = 0
            for j in range(a, b):
                i = order[j]
                if tok[i] > 0:
                    count[sctx[i]] += 1
                    m += 1
            acc = s_at
            for c in range(n_ctx):
                start[c] = acc
                if count[c]:
                    srun_key[sruns] = c
                    srun_len[sruns] = count[c]
                    sruns += 1
                    front_sruns[f] += 1
                acc += count[c]
            for j in range(a, b):
                i = order[j]
                if tok[i] > 0:
                    c = sctx[i]
                    sgn[start[c]] = neg[i]
                    start[c] += 1
            s_at += m
        return (
            tok_sym,
            run_key[:runs],
            run_len[:runs],
            front_runs,
            lo_v[:n_lo],
            lo_b[:n_lo],
            front_lo,
            hi_v[:n_hi],
            hi_b[:n_hi],
            front_hi,
            sgn[:s_at],
            srun_key[:sruns],
            srun_len[:sruns],
            front_sruns,
        )
