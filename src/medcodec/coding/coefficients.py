"""Entropy coding of a band of quantized wavelet coefficients, in 3D wavefront order.

A band's coefficients (B, H, W) are coded front by front, ``t = z + 2y + x``, so that every
coefficient's causal neighbours in the band (:data:`NEIGHBOURS`: W, N, NW, NE, WW, NN, NNE
and the previous slice) are decoded before it; a front is one vectorized step. Its context
is a bucket of an estimate of 4·|q|: a non-negative combination, with integer weights the
encoder fits per band by least squares and sends, of those neighbours' magnitudes, of the
parent's (the same orientation one level coarser, decoded before) and of the sibling's (the
band before it in the level, at the same position). The magnitude is split into a token
(coded with the bucket's frequency table, shared by the bands of a level) and raw low bits
(uniform); the sign of a nonzero coefficient is coded in one of 9 contexts of its W and N
neighbours' signs. Everything the decoder computes is integer arithmetic.
docs/FORMAT.md, section 12.11, specifies it.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptStreamError

__all__ = ["BandCoder", "fit_weights", "N_FEATURES", "N_BUCKETS", "MAX_TOKENS", "N_SIGN_CONTEXTS"]

#: Causal neighbours within the band (dz, dy, dx), decodable in wavefront order t = z + 2y + x.
NEIGHBOURS = ((0, 0, -1), (0, -1, 0), (0, -1, -1), (0, -1, 1), (0, 0, -2), (0, -2, 0), (0, -2, 1), (-1, 0, 0))
#: Context features: the neighbours' magnitudes, then the parent's and the sibling's.
N_FEATURES = len(NEIGHBOURS) + 2
#: Fixed-point scale of the context weights; features and weights are capped so sums fit int64.
C_SCALE, C_LIMIT, FEATURE_LIMIT = 10, 1 << 20, 1 << 31
#: Bucket ``k`` holds coefficients whose estimated 4·|q| reaches THRESHOLDS[k - 1] (two per octave).
THRESHOLDS = np.unique(np.round(2.0 ** (np.arange(0, 40) / 2.0)).astype(np.int64))[:21]
N_BUCKETS = THRESHOLDS.size + 1
#: Magnitudes below 2**DIRECT_BITS are their own token; larger ones keep MANTISSA_BITS below the top bit.
DIRECT_BITS, MANTISSA_BITS = 4, 2
#: Magnitudes below 2**31: at most 28 raw bits.
MAX_MAGNITUDE_BITS = 31
MAX_TOKENS = (1 << DIRECT_BITS) + (1 << MANTISSA_BITS) * (MAX_MAGNITUDE_BITS - DIRECT_BITS)
N_SIGN_CONTEXTS = 9
_PAD = (1, 2, 2, 1)
#: Coefficients a band's context weights are fitted on, at most.
_FIT_SAMPLES = 1 << 13  # z before; y above; x left and right


def magnitude_tokens(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split magnitudes (int64, < 2**31) into (token, raw-bit count, raw bits)."""
    big = u >> DIRECT_BITS > 0
    e = np.zeros_like(u)
    if big.any():
        e[big] = np.searchsorted(1 << np.arange(63, dtype=np.int64), u[big], side="right") - 1
    nraw = np.where(big, e - MANTISSA_BITS, 0)
    tok = np.where(
        big, (1 << DIRECT_BITS) + ((e - DIRECT_BITS) << MANTISSA_BITS) + ((u >> nraw) & ((1 << MANTISSA_BITS) - 1)), u
    )
    return tok, nraw, u & ((np.int64(1) << nraw) - 1)


def token_raw_bits(tok: np.ndarray) -> np.ndarray:
    """Raw-bit count of each token."""
    big = tok >= 1 << DIRECT_BITS
    return np.where(big, ((tok - (1 << DIRECT_BITS)) >> MANTISSA_BITS) + DIRECT_BITS - MANTISSA_BITS, 0)


def magnitudes(tok: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Invert :func:`magnitude_tokens`."""
    big = tok >= 1 << DIRECT_BITS
    top = (1 << MANTISSA_BITS) + ((tok - (1 << DIRECT_BITS)) & ((1 << MANTISSA_BITS) - 1))
    return np.where(big, (top << token_raw_bits(tok)) | raw, tok)


def fit_weights(coder: BandCoder) -> np.ndarray:
    """Context weights for a band whose coefficients ``coder`` holds (encoder only): a
    non-negative least-squares fit of 4|q| on the features, in fixed point."""
    a = coder.mag[coder.interior].ravel()
    if not a.any():
        return np.zeros(N_FEATURES, np.int64)
    pick = np.arange(0, a.size, max(1, a.size // _FIT_SAMPLES))
    f = np.concatenate([coder.features(coder.flat[pick]), coder.external[:, pick].T], axis=1).astype(np.float64)
    target = 4.0 * a[pick]
    w = np.zeros(N_FEATURES)
    active = np.ones(N_FEATURES, bool)
    for _ in range(N_FEATURES):  # drop negative weights and refit: a small non-negative least squares
        sol, *_ = np.linalg.lstsq(f[:, active], target, rcond=None)
        w[:] = 0
        w[active] = sol
        if (sol >= 0).all():
            break
        active &= w > 0
        if not active.any():
            break
    return np.clip(np.round(np.maximum(w, 0) * (1 << C_SCALE)), 0, C_LIMIT).astype(np.int64)


class BandCoder:
    """The decoder's state for one band: padded magnitudes and signs, its fronts, its features.

    The encoder runs the same loop (:meth:`fronts`) over known coefficients, so both sides
    visit the symbols in one order.
    """

    def __init__(
        self, shape: tuple[int, ...], parent: np.ndarray, sibling: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        b, h, w = shape
        pz, py, pxl, pxr = _PAD
        self.shape = (b, h, w)
        self.padded = (b + pz, h + py, w + pxl + pxr)
        self.mag = np.zeros(self.padded, np.int64)
        self.sign = np.zeros(self.padded, np.int64)
        self.interior = (slice(pz, None), slice(py, None), slice(pxl, pxl + w))
        zi, yi, xi = np.arange(b)[:, None, None], np.arange(h)[None, :, None], np.arange(w)[None, None, :]
        t = (zi + 2 * yi + xi).ravel()
        # A stable sort of small integers is a radix sort: the fronts' order costs little.
        self.order = np.argsort(t.astype(np.uint16 if t.size and t.max() < 1 << 16 else np.int64), kind="stable")
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(t, minlength=int(t.max()) + 1 if t.size else 0))])
        rows, cols = self.padded[1], self.padded[2]
        self.flat = (((zi + pz) * rows + yi + py) * cols + xi + pxl).ravel()
        self.off = np.array(
            [np.ravel_multi_index((pz + dz, py + dy, pxl + dx), self.padded) for dz, dy, dx in NEIGHBOURS]
        )
        self.off -= np.ravel_multi_index((pz, py, pxl), self.padded)
        self.external = np.stack(
            [np.minimum(parent.ravel(), FEATURE_LIMIT), np.minimum(sibling.ravel(), FEATURE_LIMIT)]
        )
        self.weights = np.zeros(N_FEATURES, np.int64) if weights is None else weights
        self.tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the encoder's, once computed

    def load(self, q: np.ndarray) -> None:
        """Hold known coefficients (the encoder's side)."""
        self.mag[self.interior] = np.abs(q)
        self.sign[self.interior] = np.sign(q)

    @property
    def n_fronts(self) -> int:
        return self.bounds.size - 1

    def front(self, f: int) -> np.ndarray:
        """Interior indices of front ``f``, in (z, y, x) order."""
        return self.order[self.bounds[f] : self.bounds[f + 1]]

    def features(self, pos: np.ndarray) -> np.ndarray:
        """Neighbour magnitudes (n, len(NEIGHBOURS)) at padded flat positions."""
        return np.minimum(self.mag.ravel()[pos[:, None] + self.off[None, :]], FEATURE_LIMIT)

    def contexts(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude bucket and sign context of interior indices ``idx`` (their neighbours decoded)."""
        pos = self.flat[idx]
        f = self.features(pos)
        k = len(NEIGHBOURS)
        est = f @ self.weights[:k] + self.external[:, idx].T @ self.weights[k:]
        bucket = np.searchsorted(THRESHOLDS, est >> C_SCALE, side="right")
        s = self.sign.ravel()
        sctx = 3 * (s[pos + self.off[0]] + 1) + (s[pos + self.off[1]] + 1)
        return bucket, sctx

    def store(self, idx: np.ndarray, mag: np.ndarray, sign: np.ndarray) -> None:
        pos = self.flat[idx]
        self.mag.ravel()[pos] = mag
        self.sign.ravel()[pos] = sign

    def values(self) -> np.ndarray:
        """The decoded coefficients (B, H, W)."""
        return (self.mag * self.sign)[self.interior]


def check_weights(w: np.ndarray) -> None:
    if w.shape != (N_FEATURES,) or (w < 0).any() or (w > C_LIMIT).any():
        raise CorruptStreamError("transform context weights are out of range")
