"""Reversible integer CDF 9/7 wavelet: lifting along one axis, and the dyadic 3D decomposition.

Each lifting step adds ``(a * (left + right) + 2**13) >> 14`` to the other phase, with ``a``
the CDF 9/7 lifting constant in 14-bit fixed point, and mirrors at the ends; its inverse
subtracts the same integers, so :func:`inverse` undoes :func:`forward` exactly and every
machine computes the same coefficients. The steps are not scaled by the 9/7 normalization
factor (which no integer step can apply reversibly): the quantizer absorbs it through each
band's step size (:func:`band_norms`).

Coefficients live in place, in the Mallat layout: after a level the low-pass block of every
axis it splits comes first (``ceil(n / 2)`` entries) and the high-pass block after it, and
the next level splits the all-low block again. docs/FORMAT.md, section 12.11, specifies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "Plan", "forward", "inverse", "band_norms", "plan"]

#: The CDF 9/7 lifting constants (predict, update, predict, update) in 14-bit fixed point.
SHIFT = 14
STEPS = (-25987, -868, 14466, 7266)
#: Which of the steps update the even samples (the others predict the odd ones).
_UPDATES = (False, True, False, True)
#: In-plane and z levels at most; a level needs at least this many samples along an axis it splits.
MAX_LEVELS, MIN_SPLIT = 5, 8


def _lift(x: np.ndarray, sign: int) -> None:
    """One axis (axis 0) of lifting in place on a (n, ...) int64 view; ``sign`` -1 inverts."""
    n = x.shape[0]
    if n < 2:
        return
    e, o = x[0::2], x[1::2]
    ne, no = e.shape[0], o.shape[0]
    half = 1 << (SHIFT - 1)
    steps = STEPS if sign > 0 else STEPS[::-1]
    updates = _UPDATES if sign > 0 else _UPDATES[::-1]
    for a, update in zip(steps, updates):
        if not update:  # predict: odd samples from their even neighbours (the right one mirrored at the end)
            right = e[1 : no + 1] if ne > no else np.concatenate([e[1:], e[-1:]])
            o += sign * ((a * (e[:no] + right) + half) >> SHIFT)
        else:  # update: even samples from their odd neighbours (mirrored at both ends)
            left = np.concatenate([o[:1], o[: ne - 1]])
            right = o[:ne] if no == ne else np.concatenate([o, o[-1:]])
            e += sign * ((a * (left + right) + half) >> SHIFT)


def _split(x: np.ndarray, axis: int) -> None:
    """Lift along ``axis`` and reorder into [low | high] in place."""
    v = np.moveaxis(x, axis, 0)
    _lift(v, 1)
    v[...] = np.concatenate([v[0::2], v[1::2]])


def _merge(x: np.ndarray, axis: int) -> None:
    """Invert :func:`_split`."""
    v = np.moveaxis(x, axis, 0)
    ne = (v.shape[0] + 1) // 2
    out = np.empty_like(v)
    out[0::2], out[1::2] = v[:ne], v[ne:]
    _lift(out, -1)
    v[...] = out


@dataclass(frozen=True)
class Band:
    """One subband: its level, its block in the Mallat layout, and which axes it is high-pass along."""

    level: int
    block: tuple[slice, slice, slice]
    high: tuple[bool, bool, bool]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.block)


@dataclass(frozen=True)
class Plan:
    """The decomposition of one tile shape: levels per axis, the bands (coarse to fine) and the low band."""

    shape: tuple[int, int, int]
    xy_levels: int
    z_levels: int
    bands: tuple[Band, ...]
    low: tuple[slice, slice, slice]

    def axes(self, level: int) -> tuple[int, ...]:
        return ((0,) if level < self.z_levels else ()) + ((1, 2) if level < self.xy_levels else ())


def plan(shape: tuple[int, int, int], z_levels: int) -> Plan:
    """The decomposition of a tile: as many in-plane levels as fit (at most :data:`MAX_LEVELS`), and
    ``z_levels`` along z where the depth allows it."""
    xy = 0
    while xy < MAX_LEVELS and min(shape[1], shape[2]) >= MIN_SPLIT << xy:
        xy += 1
    z = 0
    while z < min(z_levels, MAX_LEVELS) and shape[0] >= MIN_SPLIT << z:
        z += 1
    size = list(shape)
    bands: list[Band] = []
    for level in range(max(xy, z)):
        axes = ((0,) if level < z else ()) + ((1, 2) if level < xy else ())
        low = [(s + 1) // 2 if a in axes else s for a, s in enumerate(size)]
        for code in range(1, 1 << len(axes)):
            high = [False, False, False]
            for i, a in enumerate(axes):
                high[a] = bool(code >> (len(axes) - 1 - i) & 1)
            block = tuple(slice(low[a], size[a]) if high[a] else slice(0, low[a]) for a in range(3))
            bands.append(Band(level, block, tuple(high)))
        size = low
    low_block = tuple(slice(0, s) for s in size)
    # Coarse to fine: a band's parent (the same orientation one level up) is decoded before it.
    ordered = sorted(bands, key=lambda b: -b.level)
    return Plan(tuple(shape), xy, z, tuple(ordered), low_block)


def forward(x: np.ndarray, p: Plan) -> np.ndarray:
    """The integer coefficients of ``x`` (int64, shape ``p.shape``) in the Mallat layout."""
    c = np.array(x, dtype=np.int64, copy=True)
    size = list(p.shape)
    for level in range(max(p.xy_levels, p.z_levels)):
        axes = p.axes(level)
        view = c[: size[0], : size[1], : size[2]]
        for a in axes:
            _split(view, a)
        size = [(s + 1) // 2 if a in axes else s for a, s in enumerate(size)]
    return c


def inverse(c: np.ndarray, p: Plan) -> np.ndarray:
    """Invert :func:`forward` (exactly, for any integer coefficients)."""
    x = np.array(c, dtype=np.int64, copy=True)
    sizes = [list(p.shape)]
    for level in range(max(p.xy_levels, p.z_levels)):
        axes = p.axes(level)
        sizes.append([(s + 1) // 2 if a in axes else s for a, s in enumerate(sizes[-1])])
    for level in reversed(range(max(p.xy_levels, p.z_levels))):
        size = sizes[level]
        view = x[: size[0], : size[1], : size[2]]
        for a in reversed(p.axes(level)):
            _merge(view, a)
    return x


_IMPULSE = 1 << 20


def _norm_1d(n: int, splits: int, high: bool) -> float:
    """Norm of a 1D synthesis function: the high band of split ``splits - 1``, or the low band after ``splits``."""
    sizes = [n]
    for _ in range(splits):
        sizes.append((sizes[-1] + 1) // 2)
    x = np.zeros((n, 1), np.int64)
    if high:
        lo, hi = sizes[splits], sizes[splits - 1]
    else:
        lo, hi = 0, sizes[splits]
    x[(lo + hi - 1) // 2] = _IMPULSE
    for j in reversed(range(splits)):
        _merge(x[: sizes[j]], 0)
    return float(np.sqrt((x.astype(np.float64) ** 2).sum())) / _IMPULSE


def band_norms(p: Plan) -> tuple[np.ndarray, float]:
    """The L2 norm of each band's synthesis function, and the low band's: the factor by which a
    coefficient's error reaches the voxels. The decomposition is separable, so each norm is a
    product of 1D norms (an impulse through the inverse lifting). The encoder's step sizes come
    from them; the decoder never computes them."""

    def splits(axis: int, level: int) -> int:
        return sum(axis in p.axes(j) for j in range(level + 1))

    norms = []
    for b in p.bands:
        f = 1.0
        for a in range(3):
            k = splits(a, b.level)
            f *= _norm_1d(p.shape[a], k, b.high[a]) if k else 1.0
        norms.append(f)
    top = max(p.xy_levels, p.z_levels) - 1
    low = 1.0
    for a in range(3):
        k = splits(a, top)
        low *= _norm_1d(p.shape[a], k, False) if k else 1.0
    return np.array(norms), low
