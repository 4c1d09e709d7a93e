"""The intensity map between voxel values and the network's normalized range [-1, 1].

The map is fixed by the volume's minimum ``lo`` and maximum ``hi`` (stored in
the header). The encoder normalizes in floating point: it only shapes the
latents. The way back, from the synthesis network's fixed-point output ``o``
(units of 2**-12 of the normalized range) to voxel units, decides the
predictor of the residual layer and is therefore exact: integer arithmetic for
integer volumes, IEEE float64 basic operations (identical on every machine)
for float volumes.
"""

from __future__ import annotations

import numpy as np

from ..format.fixedpoint import OUT_FRAC_BITS

__all__ = ["normalize", "to_voxels"]

_ONE = 1 << OUT_FRAC_BITS


def normalize(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Voxels to float32 in [-1, 1]."""
    span = max(float(hi) - float(lo), 1e-30)
    return ((x.astype(np.float64) - float(lo)) * (2.0 / span) - 1.0).astype(np.float32)


def to_voxels(o: np.ndarray, lo: float, hi: float, integer: bool) -> np.ndarray:
    """Fixed-point network output to voxel units, clamped to [lo, hi].

    Returns int64 for integer volumes (exact rounding), float64 otherwise.
    """
    o = np.clip(o, -2 * _ONE, 2 * _ONE)  # keeps the integer products far from overflow
    if integer:
        lo_i, span = int(lo), int(hi) - int(lo)
        v = ((o + _ONE) * span + _ONE) >> (OUT_FRAC_BITS + 1)
        return np.clip(v + lo_i, lo_i, int(hi))
    v = (o.astype(np.float64) + _ONE) * ((float(hi) - float(lo)) / (2 * _ONE)) + float(lo)
    return np.clip(v, float(lo), float(hi))
