"""Splitting a volume into independently coded tiles.

Tiles bound the memory a coder needs and make decoding order-free. The grid is
a pure function of the volume shape and the nominal tile size recorded in the
header: along each axis of length ``n`` with nominal tile ``t``, there are
``k = ceil(n / t)`` tiles with boundaries ``i * n // k``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_TILE", "tile_grid", "pad_edge"]

#: Nominal tile extent (z, y, x): about 4 M voxels.
DEFAULT_TILE = (64, 256, 256)


def tile_grid(shape: tuple[int, int, int], tile: tuple[int, int, int]) -> list[tuple[slice, slice, slice]]:
    """Tiles of a volume of ``shape``, in z-major order, as slice triples."""
    axes = []
    for n, t in zip(shape, tile):
        k = -(-n // t)
        cuts = [i * n // k for i in range(k + 1)]
        axes.append([slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def pad_edge(a: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the last three axes of ``a`` at their ends to multiples of ``multiple`` by edge replication."""
    pad = [(0, 0)] * (a.ndim - 3) + [(0, (-s) % multiple) for s in a.shape[-3:]]
    return np.pad(a, pad, mode="edge") if any(p[1] for p in pad) else a
