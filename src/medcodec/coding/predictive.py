"""The predictive coder: lossless and error-bounded coding of integer tiles.

A tile's slices are coded in z levels. With ``z_levels = L`` the key slices
``0, 2^L, 2·2^L, ...`` come first; each later level codes the slices halfway
between decoded ones, whose two z neighbours (at ``±h``) are then known. The
encoder picks ``L`` per tile from estimated bits (0 for thick slices). Within a
level all its slices are coded together, voxel by voxel in wavefront order
``t = 2y + x`` so that every voxel's 17 in-plane causal neighbours
(:data:`INPLANE`) are decoded before it; a wavefront is one vectorized step.

Each voxel's prediction is a linear combination of those neighbours, of 5 voxels
of each z neighbour slice (levels after the key slices) and of the quantized
residuals of its first :data:`N_FEEDBACK` neighbours, with integer weights that
the encoder fits by least squares per level and per class (4 activity classes
by fitted thresholds × 3 gradient orientations) and sends. The residual,
quantized with step ``2d + 1``, is coded in one of :data:`N_BUCKETS` contexts: a
bucket of an estimate of its magnitude (a fitted non-negative combination of the
local gradients and the |residuals| of :data:`N_ERR_CONTEXT` neighbours), times
whether the prediction lies within 0-3 steps of ``lo``, where residuals are
one-sided (air in CT, background in MR). Symbols are split into a token
(:func:`tokens`) coded with the context's frequency table (measured by the
encoder, normalized and sent) and raw low bits coded uniformly, all through one
constriction ANS stream per tile. docs/FORMAT.md, section 12, specifies it.

Everything the decoder computes is integer arithmetic, so it decodes the same
voxels on every machine. The numpy loops here (one wavefront per step) are the
reference; :mod:`medcodec.coding.wavefront` computes the same integers compiled, and is
used wherever numba imports (set ``MEDCODEC_NO_JIT`` to run the reference).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

from ..errors import CorruptStreamError, TruncatedStreamError
from . import symbols
from .entropy import unzstd

__all__ = ["encode_tile", "decode_tile", "compiled", "tokens", "untokens", "N_BUCKETS", "MAX_Z_LEVELS"]

#: In-plane causal neighbours (dy, dx), decodable in wavefront order t = 2y + x.
INPLANE = (
    (0, -1),
    (-1, 0),
    (-1, -1),
    (-1, 1),
    (0, -2),
    (-2, 0),
    (-1, -2),
    (-2, -1),
    (-2, 1),
    (0, -3),
    (-3, 0),
    (-2, -2),
    (-2, 2),
    (-1, -3),
    (-3, -1),
    (-3, 1),
    (-2, -3),
)
#: The first N_FEEDBACK in-plane neighbours' quantized residuals are prediction features too (bias feedback).
N_FEEDBACK = 4
#: The first N_ERR_CONTEXT in-plane neighbours' |residuals| enter the coding context.
N_ERR_CONTEXT = 6
ERR_LIMIT = 1 << 24
#: Voxels of each z neighbour slice used by the prediction (dy, dx).
ZNEIGHBOURS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))
#: Fixed-point scale of the prediction weights, and of the context weights.
W_SCALE, C_SCALE = 12, 10
W_LIMIT, C_LIMIT = 1 << 18, 1 << 20
N_ACTIVITY, N_ORIENT = 4, 3
N_CLASSES = N_ACTIVITY * N_ORIENT
#: Context buckets: bucket ``k`` holds residuals whose estimated 4·E|q| reaches THRESHOLDS[k - 1].
THRESHOLDS = np.unique(np.round(2.0 ** (np.arange(0, 40) / 2.0)).astype(np.int64))[:19]
N_MAGNITUDES = THRESHOLDS.size + 1
#: Predictions this close to ``lo`` (in steps: 0, 1, 2-3) get tables of their own: residuals there are one-sided.
N_EDGES = 4
N_BUCKETS = N_MAGNITUDES * N_EDGES
#: Symbols below 2**DIRECT_BITS are their own token; larger ones keep MANTISSA_BITS below the top bit.
DIRECT_BITS, MANTISSA_BITS = 4, 2
#: Tokens cover |q| <= 2**33 (every integer span the format allows): at most 32 raw bits, two uniform parts.
MAX_TOKENS = (1 << DIRECT_BITS) + (1 << MANTISSA_BITS) * (35 - DIRECT_BITS)
MAX_Z_LEVELS = 3


def _margins() -> tuple[int, int, int, int]:
    """Top, bottom, left and right margins of the padded planes: room for every neighbour offset."""
    offs = INPLANE + ZNEIGHBOURS
    return (
        max(-dy for dy, _ in offs),
        max(dy for dy, _ in offs),
        max(-dx for _, dx in offs),
        max(dx for _, dx in offs),
    )


#: Voxels sampled to fit a level's parameters, and to compare z depths.
_FIT_SAMPLES, _PLAN_SAMPLES = 1 << 14, 1 << 12
#: Slices of a level the fit looks at, at most (evenly spread).
_FIT_SLICES = 16
#: Lossless levels: the feedback weights are scaled by the factor (num/4) whose trial coding of
#: at most _DAMP_SLICES of the level's slices takes the fewest bits.
_DAMP_FACTORS, _DAMP_SLICES = (4, 3, 2), 2
#: Fronts whose symbols are turned into tokens at once (bounds the encoder's transient memory).
_TOKEN_BATCH = 64
_HEAD = struct.Struct("<BII")
#: Flag in the header's z-levels byte: every level's parameters hold its weight-region side.
_REGIONAL = 0x10
#: Sides a weight region may have.
_MIN_BLOCK, _MAX_BLOCK = 32, 1 << 16
_TRIM = 5
#: Weight-region sides the encoder picks from (smallest first): the smallest whose regions hold
#: _REGION_VOXELS voxels of the level on average. A level's weights are fitted on _FIT_SAMPLES
#: voxels of each region.
_BLOCKS, _REGION_VOXELS = (64, 128), 1 << 16


def tokens(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split signed symbols into (token, raw-bit count, raw bits) (int64 arrays)."""
    u = np.where(q >= 0, 2 * q, -2 * q - 1)
    big = u >> DIRECT_BITS > 0
    e = np.zeros_like(u)
    if big.any():
        ub = u[big]
        # floor(log2) by comparison with powers of two: exact for every int64.
        e[big] = np.searchsorted(1 << np.arange(63, dtype=np.int64), ub, side="right") - 1
    nraw = np.where(big, e - MANTISSA_BITS, 0)
    tok = np.where(
        big, (1 << DIRECT_BITS) + ((e - DIRECT_BITS) << MANTISSA_BITS) + ((u >> nraw) & ((1 << MANTISSA_BITS) - 1)), u
    )
    raw = u & ((np.int64(1) << nraw) - 1)
    return tok, nraw, raw


def raw_bits(tok: np.ndarray) -> np.ndarray:
    """Raw-bit count of each token."""
    big = tok >= 1 << DIRECT_BITS
    return np.where(big, ((tok - (1 << DIRECT_BITS)) >> MANTISSA_BITS) + DIRECT_BITS - MANTISSA_BITS, 0)


def untokens(tok: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Invert :func:`tokens`."""
    big = tok >= 1 << DIRECT_BITS
    nraw = raw_bits(tok)
    top = (1 << MANTISSA_BITS) + ((tok - (1 << DIRECT_BITS)) & ((1 << MANTISSA_BITS) - 1))
    u = np.where(big, (top << nraw) | raw, tok)
    return np.where(u & 1, -((u + 1) >> 1), u >> 1)


@dataclass
class _Level:
    """What a z level's decoder needs besides the voxels: fitted once by the encoder."""

    fill: int
    act_thr: np.ndarray  # (N_ACTIVITY - 1,) nondecreasing
    weights: np.ndarray  # (regions * N_CLASSES, features), region-major
    ctx_w: np.ndarray  # (contexts,)
    counts: np.ndarray  # (N_BUCKETS, width) token frequencies, each row normalized (:func:`_normalized`)
    block: int = 0  # side of the square regions with weights of their own (0: one region)

    def words(self, regional: bool) -> np.ndarray:
        """The level's parameter words; ``regional``: format 5.0's, with the region side."""
        head = [self.fill, self.block] if regional else [self.fill]
        return np.concatenate([head, self.act_thr, self.weights.ravel(), self.ctx_w, [self.counts.shape[1]]])


def _n_regions(block: int, h: int, w: int) -> int:
    return (-(-h // block)) * (-(-w // block)) if block else 1


def _regions(y: np.ndarray, x: np.ndarray, block: int, w: int) -> np.ndarray:
    """The weight region of voxels (y, x) of a plane ``w`` wide."""
    return (y // block) * -(-w // block) + x // block if block else np.zeros_like(y)


def _n_features(has_z: bool) -> int:
    return len(INPLANE) + (2 * len(ZNEIGHBOURS) if has_z else 0) + N_FEEDBACK


def _n_contexts(has_z: bool) -> int:
    return (3 if has_z else 2) + N_ERR_CONTEXT


class _Planes:
    """Padded (B, rows, cols) planes of one z level, flattened per slice, and neighbour offsets."""

    def __init__(self, shape: tuple[int, int, int], fill: int, zm: np.ndarray | None, zp: np.ndarray | None) -> None:
        b, h, w = shape
        top, bottom, left, right = self.pad = _margins()
        self.h, self.w, self.cols = h, w, w + left + right
        self.recon = np.full((b, (h + top + bottom) * self.cols), fill, dtype=np.int64)
        self.err = np.zeros_like(self.recon)
        pad = ((0, 0), (top, bottom), (left, right))
        self.z = None if zm is None else [np.pad(s, pad, mode="edge").reshape(b, -1) for s in (zm, zp)]
        self.off = np.array([dy * self.cols + dx for dy, dx in INPLANE], dtype=np.int64)
        self.zoff = np.array([dy * self.cols + dx for dy, dx in ZNEIGHBOURS], dtype=np.int64)

    def positions(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (y + self.pad[0]) * self.cols + (x + self.pad[2])

    def interior(self) -> np.ndarray:
        top, left = self.pad[0], self.pad[2]
        return self.recon.reshape(self.recon.shape[0], -1, self.cols)[:, top : top + self.h, left : left + self.w]

    def front(self, t: int) -> np.ndarray:
        """Padded positions of wavefront ``t`` (voxels with 2y + x = t)."""
        y = np.arange(max(0, -(-(t - self.w + 1) // 2)), min(self.h - 1, t // 2) + 1)
        return self.positions(y, t - 2 * y)

    @property
    def n_fronts(self) -> int:
        return 2 * (self.h - 1) + self.w

    def neighbours(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At padded positions: the neighbours minus the base prediction (B, k, n), the base (B, n)
        and the activities dh, dv (and dz) stacked (B, 2 or 3, n)."""
        g = self.recon[:, pos[None, :] + self.off[:, None]]
        w_, n_, nw, ne, ww, nn = g[:, 0], g[:, 1], g[:, 2], g[:, 3], g[:, 4], g[:, 5]
        dh = np.abs(w_ - ww) + np.abs(n_ - nw) + np.abs(n_ - ne)
        dv = np.abs(w_ - nw) + np.abs(n_ - nn)
        if self.z is not None:
            zg = np.concatenate([p[:, pos[None, :] + self.zoff[:, None]] for p in self.z], axis=1)
            base = (zg[:, 0] + zg[:, len(ZNEIGHBOURS)]) >> 1
            dz = np.abs(zg[:, 0] - zg[:, len(ZNEIGHBOURS)])
            g = np.concatenate([g, zg], axis=1)
            acts = np.stack((dh, dv, dz), axis=1)
        else:
            base = (w_ + n_) >> 1
            acts = np.stack((dh, dv), axis=1)
        return g - base[:, None, :], base, acts

    def predict(self, pos: np.ndarray, lv: _Level, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (B, n) at padded positions and the context features (B, k, n) besides errors."""
        f, base, acts = self.neighbours(pos)
        cls = _classes(acts, lv.act_thr)
        if lv.block:
            # Clamped: the encoder's fit also predicts at padded positions beside the plane.
            y = np.clip(pos // self.cols - self.pad[0], 0, self.h - 1)
            x = np.clip(pos % self.cols - self.pad[2], 0, self.w - 1)
            cls = cls + N_CLASSES * _regions(y, x, lv.block, self.w)[None, :]
        if N_FEEDBACK:
            f = np.concatenate([f, self.err[:, pos[None, :] + self.off[:N_FEEDBACK, None]]], axis=1)
        s = np.einsum("bkn,bnk->bn", f, lv.weights[cls])
        pred = np.clip(base + ((s + (1 << (W_SCALE - 1))) >> W_SCALE), lo, hi)
        return pred, acts

    def buckets(
        self, pos: np.ndarray, acts: np.ndarray, lv: _Level, pred: np.ndarray, lo: int, step: int
    ) -> np.ndarray:
        e = np.abs(self.err[:, pos[None, :] + self.off[:N_ERR_CONTEXT, None]])
        c = np.concatenate([acts, e], axis=1)
        ctx = np.einsum("bkn,k->bn", c, lv.ctx_w) >> C_SCALE
        return _bucket(ctx, pred, lo, step)


def _classes(acts: np.ndarray, act_thr: np.ndarray) -> np.ndarray:
    """Prediction class: the activity class (thresholds ``act_thr``) times 3 gradient orientations."""
    dh, dv = acts[:, 0], acts[:, 1]
    cls = np.searchsorted(act_thr, acts.sum(axis=1), side="right") * N_ORIENT
    return cls + np.where(2 * dh > 3 * dv, 1, np.where(2 * dv > 3 * dh, 2, 0))


def _bucket(ctx: np.ndarray, pred: np.ndarray, lo: int, step: int) -> np.ndarray:
    """Coding context: the magnitude estimate's bucket, and how close the prediction is to ``lo``."""
    gap = (pred - lo) // step
    edge = np.where(gap == 0, 1, np.where(gap == 1, 2, np.where(gap <= 3, 3, 0)))
    return np.searchsorted(THRESHOLDS, ctx, side="right") + N_MAGNITUDES * edge


def _levels(depth: int, z_levels: int) -> list[tuple[np.ndarray, int]]:
    """(target slices, h) of each z level in coding order; h = 0 for the key slices."""
    s = 1 << z_levels
    out = [(np.arange(0, depth, s), 0)]
    while s > 1:
        h = s // 2
        out.append((np.arange(h, depth, s), h))
        s = h
    return [(t, h) for t, h in out if t.size]


def _z_neighbours(recon: np.ndarray, t: np.ndarray, h: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if h == 0:
        return None, None
    up = np.where(t + h < recon.shape[0], t + h, t - h)
    return recon[t - h], recon[up]


def _solve(gram: np.ndarray, rhs: np.ndarray, n: int) -> np.ndarray:
    """Ridge-regularized least squares from the normal equations of ``n`` samples (a tiny
    ridge keeps collinear neighbours solvable)."""
    gram, rhs = gram.astype(np.float64), rhs.astype(np.float64)
    reg = 1e-3 * max(1.0, float(np.trace(gram)) / max(1, n * gram.shape[0]))
    return np.linalg.solve(gram + reg * np.eye(gram.shape[0]), rhs)


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    # einsum, not BLAS: BLAS threads spin against the tile threads on a small machine.
    return _solve(np.einsum("ni,nj->ij", a, a), np.einsum("ni,n->i", a, b.astype(np.float64)), a.shape[0])


#: Normal equations are summed exactly in int64 while every product and sum stays below this.
_EXACT_LIMIT = 1 << 62


def _normal_equations(
    f: np.ndarray, target: np.ndarray, cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per class and for all samples (index N_CLASSES): the Gram matrices, right-hand sides and
    sample counts, summed exactly in integers (so their order does not matter); None where an
    int64 sum could overflow."""
    peak = max(int(np.abs(f).max(initial=0)), int(np.abs(target).max(initial=0)), 1)
    if peak * peak * max(1, f.shape[0]) >= _EXACT_LIMIT:
        return None
    k = _kernels()
    if k is not None:
        return k.normal_equations(f, target, cls, N_CLASSES)
    gram = np.zeros((N_CLASSES + 1, f.shape[1], f.shape[1]), np.int64)
    rhs = np.zeros((N_CLASSES + 1, f.shape[1]), np.int64)
    sizes = np.bincount(cls, minlength=N_CLASSES + 1)
    for c in np.flatnonzero(sizes[:N_CLASSES]):
        m = cls == c
        gram[c], rhs[c] = np.einsum("ni,nj->ij", f[m], f[m]), np.einsum("ni,n->i", f[m], target[m])
    gram[N_CLASSES], rhs[N_CLASSES], sizes[N_CLASSES] = gram[:N_CLASSES].sum(0), rhs[:N_CLASSES].sum(0), f.shape[0]
    return gram, rhs, sizes


def _class_weights(f: np.ndarray, target: np.ndarray, cls: np.ndarray, zeros: int) -> np.ndarray:
    """Fixed-point least-squares weights per class (``zeros`` trailing features left at 0)."""
    weights = np.zeros((N_CLASSES, f.shape[1] + zeros), np.int64)
    exact = _normal_equations(f, target, cls)
    if exact is not None:
        gram, rhs, sizes = exact
        everyone = _solve(gram[N_CLASSES], rhs[N_CLASSES], f.shape[0])
    else:
        everyone = _lstsq(f, target)
    for c in range(N_CLASSES):
        if exact is not None:
            wc = _solve(gram[c], rhs[c], int(sizes[c])) if sizes[c] > 4 * f.shape[1] else everyone
        else:
            m = cls == c
            wc = _lstsq(f[m], target[m]) if m.sum() > 4 * f.shape[1] else everyone
        weights[c, : f.shape[1]] = np.clip(np.round(wc * (1 << W_SCALE)), -W_LIMIT, W_LIMIT)
    return weights


def _region_weights(
    f: np.ndarray, target: np.ndarray, cls: np.ndarray, reg: np.ndarray, n_reg: int, zeros: int, trim: bool
) -> np.ndarray:
    """:func:`_class_weights` of each region's samples, stacked region-major.

    ``trim``: refit without the samples whose residual exceeds _TRIM times the mean (edges
    such as a CT's scan circle, which would otherwise pull the weights of a whole class)."""
    order = np.argsort(reg, kind="stable")
    f, target, cls = f[order], target[order], cls[order]
    bounds = np.searchsorted(reg[order], np.arange(n_reg + 1))
    out = []
    for r in range(n_reg):
        fr, tr, cr = (v[bounds[r] : bounds[r + 1]] for v in (f, target, cls))
        w = _class_weights(fr, tr, cr, zeros)
        if trim and tr.size:
            res = np.abs(tr - ((fr * w[cr, : f.shape[1]]).sum(1) >> W_SCALE))
            keep = res <= _TRIM * max(1.0, float(res.mean()))
            w = _class_weights(fr[keep], tr[keep], cr[keep], zeros)
        out.append(w)
    return np.concatenate(out)


def _spread(t: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the slices ``t``, evenly spread."""
    return t if t.size <= n else t[np.unique(np.linspace(0, t.size - 1, n).round().astype(np.int64))]


def _block(slices: int, h: int, w: int) -> int:
    """The weight-region side of a level of ``slices`` slices of h × w (0: one region).

    A region's weights cost about as much as a few thousand residual bits: regions pay where
    each holds enough voxels to fit them well (ATTEMPTS.md, L14)."""
    for block in _BLOCKS:
        n_reg = _n_regions(block, h, w)
        if n_reg > 1 and slices * h * w >= _REGION_VOXELS * n_reg:
            return block
    return 0


def _fit_level(
    x: np.ndarray,
    t: np.ndarray,
    h: int,
    step: int,
    lo: int,
    hi: int,
    samples: int = _FIT_SAMPLES,
    final: bool = False,
    regional: bool = True,
) -> tuple[_Level, float]:
    """Fit level ``(t, h)`` of tile ``x`` (original voxels); returns its parameters and an estimate of its bits.

    A spread of at most _FIT_SLICES of its slices carries the statistics; all of them (and
    their z neighbours) would only cost memory. ``final`` (the levels the tile is coded with)
    tunes a lossless level's feedback weights (:func:`_damp_feedback`). ``regional`` (format
    5.0 sections) trims the fit's outliers and gives final levels weights per region
    (:func:`_block`).
    """
    fill = int(np.median(x[t, 0, :]))
    block = _block(t.size, x.shape[1], x.shape[2]) if final and regional else 0
    keep = _spread(t, _FIT_SLICES)
    voxels = t.size * x.shape[1] * x.shape[2]
    lv, bits = _fit(x[keep], *_z_neighbours(x, keep, h), fill, voxels, step, lo, hi, samples, block, regional and final)
    if final and step == 1 and N_FEEDBACK:
        _damp_feedback(x, t, h, lv, lo, hi)
    return lv, bits


def _trial_bits(x: np.ndarray, zm, zp, lv: _Level, lo: int, hi: int) -> float:
    """Bits of coding slices ``x`` losslessly with ``lv`` (tokens at their empirical entropy, raw bits)."""
    planes = _Planes(x.shape, lv.fill, zm, zp)
    k = _kernels()
    if k is not None:
        n = x.size
        bucket, tok, nraw = (np.empty(n, np.uint8) for _ in range(3))
        counts = np.zeros((N_BUCKETS, MAX_TOKENS), np.int64)
        k.encode_level(
            x,
            *_kernel_args(planes, lv, _geometry(planes, lo, hi, 0, lv.block)),
            bucket,
            tok,
            nraw,
            np.empty(n, np.uint32),
            counts,
        )
    else:
        counts = _code_level_numpy(x, planes, lv, lo, hi, 0)[0].reshape(N_BUCKETS, MAX_TOKENS)
    total = counts.sum(axis=1, keepdims=True)
    p = np.where(counts > 0, counts / np.maximum(total, 1), 1.0)
    return float((counts * raw_bits(np.arange(MAX_TOKENS))).sum() - (counts * np.log2(p)).sum())


def _damp_feedback(x: np.ndarray, t: np.ndarray, h: int, lv: _Level, lo: int, hi: int) -> None:
    """Scale the feedback weights of a lossless level by the factor of _DAMP_FACTORS whose trial
    coding of a few of its slices is smallest.

    The feedback weights are fitted on the residuals of a predictor without feedback; in the
    real loop each residual feeds the next predictions, and on some tiles (a 1.5 mm MR at 0.41 mm
    pixels) the full weights amplify errors: scaled by 3/4 that tile codes 3 % smaller.
    """
    keep = _spread(t, _DAMP_SLICES)
    zm, zp = _z_neighbours(x, keep, h)
    full = lv.weights[:, -N_FEEDBACK:].copy()
    best: tuple[float, np.ndarray] | None = None
    for num in _DAMP_FACTORS:
        lv.weights[:, -N_FEEDBACK:] = (full * num + 2) >> 2
        bits = _trial_bits(x[keep], zm, zp, lv, lo, hi)
        if best is None or bits < best[0]:
            best = (bits, lv.weights[:, -N_FEEDBACK:].copy())
    assert best is not None
    lv.weights[:, -N_FEEDBACK:] = best[1]


def _predict_at(planes: _Planes, pos: np.ndarray, lv: _Level, lo: int, hi: int) -> np.ndarray:
    """``planes.predict`` at ``pos``: the predictions only, compiled where the kernels are."""
    k = _kernels()
    if k is None:
        return planes.predict(pos, lv, lo, hi)[0]
    pred = np.empty((planes.recon.shape[0], pos.size), np.int64)
    args = _kernel_args(planes, lv, _geometry(planes, lo, hi, 0, lv.block))
    k.predict_at(*args[:4], pos, *args[4:], pred)
    return pred


def _fit(
    x: np.ndarray,
    zm,
    zp,
    fill: int,
    voxels: int,
    step: int,
    lo: int,
    hi: int,
    samples: int,
    block: int = 0,
    trim: bool = False,
) -> tuple[_Level, float]:
    """Fit a level's parameters on a sample of slices ``x`` standing for ``voxels`` voxels
    (``samples`` voxels for each weight region of side ``block``; ``trim``: see
    :func:`_region_weights`)."""
    has_z = zm is not None
    b, h, w = x.shape
    n_reg = _n_regions(block, h, w)
    rng = np.random.default_rng(0)
    d = (step - 1) // 2
    if d:
        # Neighbours carry the reconstruction's error, up to +-d: fit on neighbours that do too.
        zm, zp = (None, None) if zm is None else (v + rng.integers(-d, d + 1, v.shape) for v in (zm, zp))
    planes = _Planes(x.shape, fill, zm, zp)
    planes.interior()[...] = x + (rng.integers(-d, d + 1, x.shape) if d else 0)
    orig = np.full_like(planes.recon, fill)
    top, left = planes.pad[0], planes.pad[2]
    orig.reshape(b, -1, planes.cols)[:, top : top + h, left : left + w] = x
    n_pos = max(1, samples // b) * n_reg
    ys = rng.integers(0, h, n_pos)
    xs = rng.integers(0, w, n_pos)
    # In memory order: the gathers below then run through the planes once.
    order = np.argsort(ys * w + xs, kind="stable")
    ys, xs = ys[order], xs[order]
    pos = planes.positions(ys, xs)
    reg = np.tile(_regions(ys, xs, block, w), b)
    # Activity classes: thresholds at quantiles of the sample's activity.
    f, base, acts = planes.neighbours(pos)
    act_thr = np.quantile(acts.sum(axis=1).ravel(), np.arange(1, N_ACTIVITY) / N_ACTIVITY).astype(np.int64)
    cls = _classes(acts, act_thr).ravel()
    # Weights per class, fitted on differences to the base prediction.
    f = f.transpose(0, 2, 1).reshape(-1, f.shape[1])
    target = (orig[:, pos] - base).ravel()
    probe = _Level(
        fill,
        act_thr,
        _region_weights(f, target, cls, reg, n_reg, N_FEEDBACK, trim),
        np.zeros(_n_contexts(has_z), np.int64),
        np.zeros((N_BUCKETS, 2), np.int64),
        block,
    )
    # The neighbours' residuals under those weights, then weights that also see them.
    near = pos[None, :] + planes.off[:N_ERR_CONTEXT, None]
    pred = _predict_at(planes, near.ravel(), probe, lo, hi)
    qn = np.floor_divide(orig[:, near.ravel()] - pred + d, step)
    planes.err[:, near.ravel()] = np.clip(qn, -ERR_LIMIT, ERR_LIMIT)
    qn = qn.reshape(b, N_ERR_CONTEXT, pos.size)
    if N_FEEDBACK:
        fb = planes.err[:, pos[None, :] + planes.off[:N_FEEDBACK, None]].transpose(0, 2, 1).reshape(-1, N_FEEDBACK)
        probe.weights = _region_weights(np.concatenate([f, fb], axis=1), target, cls, reg, n_reg, 0, trim)
    pred = _predict_at(planes, pos, probe, lo, hi)
    signed = np.floor_divide(orig[:, pos] - pred + d, step)
    # Context weights: fit 4·|q| on the gradients and the neighbours' |q|.
    c = np.concatenate([acts, np.abs(qn)], axis=1).transpose(0, 2, 1).reshape(-1, acts.shape[1] + N_ERR_CONTEXT)
    cw = np.maximum(_lstsq(c, 4 * np.abs(signed).ravel()), 0.0)
    probe.ctx_w = np.minimum(np.round(cw * (1 << C_SCALE)), C_LIMIT).astype(np.int64)
    # Estimated bits of the sample, scaled to the level.
    ctx = (c @ probe.ctx_w) >> C_SCALE
    bucket = _bucket(ctx, pred.ravel(), lo, step)
    signed = signed.ravel()
    tok, nraw, _ = tokens(signed)
    bits = float(nraw.sum())
    for k in range(N_BUCKETS):
        cnt = np.bincount(tok[bucket == k])
        cnt = cnt[cnt > 0]
        bits -= float((cnt * np.log2(cnt / max(1, cnt.sum()))).sum())
    return probe, bits * voxels / signed.size


def plan_tile(x: np.ndarray, step: int, lo: int, hi: int, regional: bool = True) -> tuple[int, list[_Level]]:
    """The z depth with the fewest estimated bits for this tile (0: slices coded on their own), and its levels
    (``regional``: see :func:`_fit_level`)."""
    depth = x.shape[0]
    best: tuple[float, int] | None = None
    for zl in range(0, MAX_Z_LEVELS + 1):
        if zl and depth < (1 << zl) + 1:
            break
        bits = sum(_fit_level(x, t, h, step, lo, hi, _PLAN_SAMPLES, False, regional)[1] for t, h in _levels(depth, zl))
        # A deeper z order must earn its parameters and the estimate's noise: 1 % at least.
        if best is None or bits < 0.99 * best[0]:
            best = (bits, zl)
    assert best is not None
    zl = best[1]
    return zl, [_fit_level(x, t, h, step, lo, hi, final=True, regional=regional)[0] for t, h in _levels(depth, zl)]


def _tokenized(fronts: list[tuple[np.ndarray, np.ndarray]], counts: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Fronts' (bucket, q) as (bucket, token, raw-bit count, raw bits) in the narrowest types; counts updated."""
    sizes = np.cumsum([0] + [q.size for _, q in fronts])
    bucket = np.concatenate([bk for bk, _ in fronts])
    tok, nraw, raw = tokens(np.concatenate([q for _, q in fronts]))
    counts += np.bincount(bucket * MAX_TOKENS + tok, minlength=counts.size)
    bucket, tok, nraw, raw = bucket.astype(np.uint8), tok.astype(np.uint8), nraw.astype(np.uint8), raw.astype(np.uint32)
    return [(bucket[a:b], tok[a:b], nraw[a:b], raw[a:b]) for a, b in zip(sizes[:-1], sizes[1:])]


def _kernels():
    """The compiled wavefront kernels, or None where numba is missing or MEDCODEC_NO_JIT is set."""
    global _KERNELS
    if _KERNELS is None:
        from . import wavefront

        _KERNELS = wavefront if wavefront.AVAILABLE and not os.environ.get("MEDCODEC_NO_JIT") else False
    return _KERNELS or None


_KERNELS = None


def compiled() -> bool:
    """Whether the coder's loops run compiled (numba importable and MEDCODEC_NO_JIT unset)."""
    return _kernels() is not None


_NO_Z = np.zeros((1, 1), np.int64)


def _geometry(planes: _Planes, lo: int, hi: int, d: int, block: int = 0) -> np.ndarray:
    from .wavefront import Geometry

    return Geometry.pack(
        planes.h, planes.w, planes.cols, planes.pad[0], planes.pad[2], planes.z is not None, lo, hi, d, block
    )


def _kernel_args(planes: _Planes, lv: _Level, g: np.ndarray) -> tuple:
    zm, zp = planes.z if planes.z is not None else (_NO_Z, _NO_Z)
    return planes.recon, planes.err, zm, zp, planes.off, planes.zoff, g, lv.weights, lv.act_thr, lv.ctx_w


def _code_level_compiled(k, xt: np.ndarray, planes: _Planes, lv: _Level, lo: int, hi: int, d: int):
    """Code a level with the compiled kernels: its token counts, and a function adding its symbols to a writer."""
    n = xt.size
    bucket, tok, nraw = (np.empty(n, np.uint8) for _ in range(3))
    raw = np.empty(n, np.uint32)
    counts = np.zeros((N_BUCKETS, MAX_TOKENS), np.int64)
    k.encode_level(
        xt, *_kernel_args(planes, lv, _geometry(planes, lo, hi, d, lv.block)), bucket, tok, nraw, raw, counts
    )
    rows = np.array([planes.front(f).size for f in range(planes.n_fronts)], np.int64)
    sym, run_bucket, run_len, front_runs, lo_v, lo_b, front_lo, hi_v, hi_b, front_hi = k.runs(
        bucket, tok, nraw, raw, rows * xt.shape[0], N_BUCKETS
    )
    del bucket, tok, nraw, raw

    def emit(models: list, items: list) -> None:
        bounds = np.concatenate([[0], np.cumsum(run_len)]).tolist()
        buckets, per_front = run_bucket.tolist(), front_runs.tolist()
        lo_at, hi_at = [0, *front_lo.tolist()], [0, *front_hi.tolist()]
        r = 0
        for f, n_runs in enumerate(per_front):
            for _ in range(n_runs):
                items.append((sym[bounds[r] : bounds[r + 1]], models[buckets[r]], None))
                r += 1
            if lo_at[f + 1] > lo_at[f]:
                items.append((lo_v[lo_at[f] : lo_at[f + 1]], symbols.UNIFORM, lo_b[lo_at[f] : lo_at[f + 1]]))
            if hi_at[f + 1] > hi_at[f]:
                items.append((hi_v[hi_at[f] : hi_at[f + 1]], symbols.UNIFORM, hi_b[hi_at[f] : hi_at[f + 1]]))

    return counts.ravel(), emit


def _code_level_numpy(xt: np.ndarray, planes: _Planes, lv: _Level, lo: int, hi: int, d: int):
    """Code a level with the numpy reference loop (one wavefront per step); as :func:`_code_level_compiled`."""
    step = 2 * d + 1
    fronts: list[tuple[np.ndarray, np.ndarray]] = []
    coded: list[tuple[np.ndarray, ...]] = []
    counts = np.zeros(N_BUCKETS * MAX_TOKENS, np.int64)
    for f in range(planes.n_fronts):
        pos = planes.front(f)
        pred, acts = planes.predict(pos, lv, lo, hi)
        bucket = planes.buckets(pos, acts, lv, pred, lo, step)
        yx = pos - (planes.pad[0] * planes.cols + planes.pad[2])
        yy, xx = yx // planes.cols, yx % planes.cols
        q = np.floor_divide(xt[:, yy, xx] - pred + d, step)
        planes.recon[:, pos] = np.clip(pred + q * step, lo, hi)
        planes.err[:, pos] = np.clip(q, -ERR_LIMIT, ERR_LIMIT)
        fronts.append((bucket.ravel(), q.ravel()))
        if len(fronts) == _TOKEN_BATCH or f == planes.n_fronts - 1:
            coded += _tokenized(fronts, counts)
            fronts = []

    def emit(models: list, items: list) -> None:
        for bucket, tok, nraw, raw in coded:
            order = np.argsort(bucket, kind="stable")
            sizes = np.bincount(bucket, minlength=N_BUCKETS)
            start = 0
            for k in np.flatnonzero(sizes):
                items.append((tok[order[start : start + sizes[k]]], models[k], None))
                start += sizes[k]
            for vals, bits in symbols.raw_parts(nraw.astype(np.int64), raw.astype(np.int64)):
                if vals.size:
                    items.append((vals, symbols.UNIFORM, bits))

    return counts, emit


def encode_tile(
    x: np.ndarray, d: int, lo: int, hi: int, z_levels: int | None = None, regional: bool = True
) -> tuple[bytes, np.ndarray]:
    """Code an integer tile within ``d`` (0: lossless); returns the section and the reconstruction (int64).

    ``z_levels`` fixes the z depth instead of comparing them (faster; for small side data).
    ``regional`` writes a format 5.0 section (weights per region where they pay); without it
    the section is the format 2.0-4.1 layout, as those versions' encoders wrote it."""
    x = x.astype(np.int64)
    step = 2 * d + 1
    if z_levels is None:
        z_levels, fitted = plan_tile(x, step, lo, hi, regional)
    else:
        fitted = [
            _fit_level(x, t, h, step, lo, hi, final=True, regional=regional)[0]
            for t, h in _levels(x.shape[0], z_levels)
        ]
    recon = np.empty_like(x)
    writer = symbols.Writer()
    params: list[np.ndarray] = []
    tables: list[np.ndarray] = []
    k = _kernels()
    for (t, h), lv in zip(_levels(x.shape[0], z_levels), fitted):
        zm, zp = _z_neighbours(recon, t, h)
        planes = _Planes((t.size, *x.shape[1:]), lv.fill, zm, zp)
        if k is not None:
            counts, emit = _code_level_compiled(k, x[t], planes, lv, lo, hi, d)
        else:
            counts, emit = _code_level_numpy(x[t], planes, lv, lo, hi, d)
        counts = counts.reshape(N_BUCKETS, MAX_TOKENS)
        width = max(2, int(np.flatnonzero(counts.sum(axis=0)).max()) + 1)
        lv.counts = symbols.normalized(counts[:, :width])
        emit(symbols.models(lv.counts), writer.items)
        recon[t] = planes.interior()
        params.append(lv.words(regional))
        tables.append(lv.counts.ravel())
    words = writer.words().astype("<u4").tobytes()
    zc = zstandard.ZstdCompressor(level=19)
    head = zc.compress(np.concatenate(params).astype("<i8").tobytes())
    table = zc.compress(np.concatenate(tables).astype("<u2").tobytes())
    section = _HEAD.pack(z_levels | (_REGIONAL if regional else 0), len(head), len(table)) + head + table + words
    return section, recon


class _Words:
    def __init__(self, w: np.ndarray) -> None:
        self.w, self.pos = w, 0

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.pos + n > self.w.size:
            raise CorruptStreamError("predictive parameters are short")
        out = self.w[self.pos : self.pos + n]
        self.pos += n
        return out


def _read_level(r: _Words, rc: _Words, has_z: bool, lo: int, hi: int, plane: tuple[int, int], regional: bool) -> _Level:
    fill = int(r.take(1)[0])
    block = int(r.take(1)[0]) if regional else 0
    if block and not _MIN_BLOCK <= block <= _MAX_BLOCK:
        raise CorruptStreamError("predictive weight regions have an invalid size")
    n_reg = _n_regions(block, *plane)
    act_thr = r.take(N_ACTIVITY - 1).copy()
    weights = r.take(n_reg * N_CLASSES * _n_features(has_z)).reshape(n_reg * N_CLASSES, -1).copy()
    ctx_w = r.take(_n_contexts(has_z)).copy()
    width = int(r.take(1)[0])
    if not 2 <= width <= MAX_TOKENS:
        raise CorruptStreamError("predictive token table has an invalid width")
    counts = rc.take(N_BUCKETS * width).reshape(N_BUCKETS, width).copy()
    if (np.diff(act_thr) < 0).any() or (act_thr < 0).any() or (np.abs(weights) > W_LIMIT).any():
        raise CorruptStreamError("predictive weights or thresholds are out of range")
    if (ctx_w < 0).any() or (ctx_w > C_LIMIT).any() or (counts > symbols.COUNT_TOTAL).any() or not lo <= fill <= hi:
        raise CorruptStreamError("predictive context weights, token frequencies or fill value are invalid")
    return _Level(fill, act_thr, weights, ctx_w, counts, block)


def _no_frequencies() -> CorruptStreamError:
    return CorruptStreamError("predictive symbols fall in a context with no frequencies")


def _decode_level_compiled(k, coder, planes: _Planes, lv: _Level, models: list, lo: int, hi: int, d: int) -> None:
    """Decode a level into ``planes`` with the compiled kernels, a wavefront at a time."""
    n_max = planes.recon.shape[0] * planes.h
    pred, order, tok = (np.empty(n_max, np.int64) for _ in range(3))
    sym, lo_sizes, hi_sizes = (np.empty(n_max, np.int32) for _ in range(3))
    sizes = np.zeros(N_BUCKETS, np.int64)
    args = _kernel_args(planes, lv, _geometry(planes, lo, hi, d, lv.block))
    recon, err, g = planes.recon, planes.err, args[6]
    empty = np.zeros(0, np.int32)
    for f in range(planes.n_fronts):
        n = k.front_predict(f, *args, pred, order, sizes)
        start = 0
        for b in np.flatnonzero(sizes).tolist():
            model, size = models[b], int(sizes[b])
            if model is None:
                raise _no_frequencies()
            sym[start : start + size] = coder.decode(model, size)
            start += size
        n_lo, n_hi = k.front_raw_sizes(sym, order, n, tok, lo_sizes, hi_sizes)
        lo_vals = coder.decode(symbols.UNIFORM, lo_sizes[:n_lo]) if n_lo else empty
        hi_vals = coder.decode(symbols.UNIFORM, hi_sizes[:n_hi]) if n_hi else empty
        k.front_finish(f, tok, lo_vals, hi_vals, pred, recon, err, g)


def _decode_level_numpy(coder, planes: _Planes, lv: _Level, models: list, lo: int, hi: int, d: int) -> None:
    """Decode a level into ``planes`` with the numpy reference loop."""
    step = 2 * d + 1
    n_slices = planes.recon.shape[0]
    for f in range(planes.n_fronts):
        pos = planes.front(f)
        pred, acts = planes.predict(pos, lv, lo, hi)
        bucket = planes.buckets(pos, acts, lv, pred, lo, step).ravel()
        order = np.argsort(bucket, kind="stable")
        sizes = np.bincount(bucket, minlength=N_BUCKETS)
        if any(models[k] is None for k in np.flatnonzero(sizes)):
            raise _no_frequencies()
        tok = np.empty(bucket.size, np.int64)
        start = 0
        for k in np.flatnonzero(sizes):
            tok[order[start : start + sizes[k]]] = coder.decode(models[k], int(sizes[k]))
            start += sizes[k]
        nraw = raw_bits(tok)
        raw = np.zeros_like(tok)
        m = nraw > 0
        if m.any():
            nr = nraw[m]
            lo_bits = np.minimum(nr, 16)
            vals = coder.decode(symbols.UNIFORM, (1 << lo_bits).astype(np.int32)).astype(np.int64)
            hi_n = nr - 16
            mh = hi_n > 0
            if mh.any():
                hb = np.minimum(hi_n[mh], 16)
                vals[mh] |= coder.decode(symbols.UNIFORM, (1 << hb).astype(np.int32)).astype(np.int64) << 16
            raw[m] = vals
        q = untokens(tok, raw).reshape(n_slices, -1)
        planes.recon[:, pos] = np.clip(pred + q * step, lo, hi)
        planes.err[:, pos] = np.clip(q, -ERR_LIMIT, ERR_LIMIT)


def decode_tile(
    data: bytes, shape: tuple[int, int, int], d: int, lo: int, hi: int, regional: bool = True
) -> np.ndarray:
    """Invert :func:`encode_tile`; returns the reconstruction (int64). ``regional``: the stream
    holds format 5.0 sections (and only those)."""
    if len(data) < _HEAD.size:
        raise TruncatedStreamError("predictive section ends inside its header")
    z_levels, n_head, n_table = _HEAD.unpack_from(data)
    if bool(z_levels & _REGIONAL) != regional:
        raise CorruptStreamError("predictive section's layout does not match the stream's format version")
    z_levels &= ~_REGIONAL
    if z_levels > MAX_Z_LEVELS or _HEAD.size + n_head + n_table > len(data):
        raise CorruptStreamError("predictive section header is invalid")
    levels = _levels(shape[0], z_levels)
    most = _n_regions(_MIN_BLOCK, shape[1], shape[2]) if regional else 1
    max_words = sum(
        2 + (N_ACTIVITY - 1) + most * N_CLASSES * _n_features(h > 0) + _n_contexts(h > 0) + 1 for _, h in levels
    )
    at = _HEAD.size
    r = _Words(np.frombuffer(unzstd(data[at : at + n_head], 8 * max_words), dtype="<i8").astype(np.int64))
    at += n_head
    rc = _Words(
        np.frombuffer(unzstd(data[at : at + n_table], 2 * N_BUCKETS * MAX_TOKENS * len(levels)), dtype="<u2").astype(
            np.int64
        )
    )
    body = data[at + n_table :]
    if len(body) % 4:
        raise CorruptStreamError("predictive section's coded words are not whole")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
    recon = np.empty(shape, dtype=np.int64)
    k = _kernels()
    for t, h in levels:
        lv = _read_level(r, rc, h > 0, lo, hi, shape[1:], regional)
        models = symbols.models(lv.counts)
        zm, zp = _z_neighbours(recon, t, h)
        planes = _Planes((t.size, shape[1], shape[2]), lv.fill, zm, zp)
        if k is not None:
            _decode_level_compiled(k, coder, planes, lv, models, lo, hi, d)
        else:
            _decode_level_numpy(coder, planes, lv, models, lo, hi, d)
        recon[t] = planes.interior()
    if r.pos != r.w.size or rc.pos != rc.w.size or not coder.is_empty():
        raise CorruptStreamError("predictive section has unused parameters or coded data")
    return recon
