"""The :class:`Volume` type: voxels plus the geometry that places them in space."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["Volume", "SUPPORTED_DTYPES", "as_volume", "center_crop"]

#: dtypes medcodec encodes, in the order of their stream codes (see docs/FORMAT.md).
SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64", "uint32")
)

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def geometry_problem(spacing, origin, direction) -> str | None:
    """Why a geometry places no voxel in space (None if it is usable): spacing must be finite
    and positive, the origin finite, and the direction a finite, invertible 3x3 matrix."""
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        return f"spacing must be finite and positive, got {tuple(spacing)}"
    if not all(math.isfinite(o) for o in origin):
        return f"origin must be finite, got {tuple(origin)}"
    m = np.array(direction, dtype=np.float64).reshape(3, 3)
    with np.errstate(all="ignore"):  # huge entries overflow the determinant: refused below all the same
        det = float(np.linalg.det(m)) if np.isfinite(m).all() else float("nan")
    if not math.isfinite(det) or abs(det) < 1e-6:
        return f"direction must be a finite, invertible 3x3 matrix, got {tuple(direction)}"
    return None


@dataclass
class Volume:
    """A 3D scan.

    Attributes:
        array: Voxels, axis order (z, y, x), i.e. slice, row, column, as SimpleITK returns them.
        spacing: Voxel size along (x, y, z) in mm.
        origin: Position of the first voxel along (x, y, z) in mm (LPS physical space).
        direction: Direction cosines, 9 floats, row-major 3x3 matrix.
        metadata: Free-form string metadata (for example NIfTI or DICOM tags).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) + 0.0 for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) + 0.0 for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) + 0.0 for d in self.direction)  # + 0.0: no -0.0, one spelling of a geometry
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InvalidInputError("spacing and origin need 3 values and direction 9")
        problem = geometry_problem(self.spacing, self.origin, self.direction)
        if problem:
            raise InvalidInputError(problem)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """The voxel dtype."""
        return self.array.dtype


def as_volume(data: Volume | np.ndarray) -> Volume:
    """Return ``data`` as a :class:`Volume`, checking dtype and shape.

    A 2D array is taken as a single slice. Raises :class:`InvalidInputError`
    for anything medcodec cannot encode.
    """
    if isinstance(data, (str, bytes, os.PathLike)):
        raise InvalidInputError(
            f"expected a Volume or an array, got {type(data).__name__} {data!r}; "
            "to code a file, read it first: medcodec.compress(medcodec.read(path))"
        )
    vol = data if isinstance(data, Volume) else Volume(np.asarray(data))
    arr = vol.array
    if not isinstance(arr, np.ndarray):
        raise InvalidInputError(f"volume array must be a numpy array, got {type(arr).__name__}")
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise InvalidInputError(f"volume must be 3D (z, y, x), got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise InvalidInputError(f"volume must hold at least one voxel, got shape {arr.shape}")
    if arr.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise InvalidInputError(f"unsupported dtype {arr.dtype}; supported: {names}")
    if arr.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr is vol.array:
        return vol
    return Volume(arr, vol.spacing, vol.origin, vol.direction, dict(vol.metadata))


def center_crop(array: np.ndarray, size: int | Sequence[int] | None) -> np.ndarray:
    """The centred block of at most ``size`` voxels along each axis, C-contiguous.

    ``size`` is one side for every axis, one side per axis (axes beyond it are kept whole),
    or None for the whole array. An axis no longer than its side is kept whole; where the
    surplus is odd, the extra voxel is dropped at the end. The result shares memory with
    ``array`` only when that block is already contiguous in it.

    Example:
        >>> center_crop(np.arange(10), 4)
        array([3, 4, 5, 6])
    """
    if size is None:
        return np.ascontiguousarray(array)
    sides = [int(size)] * array.ndim if isinstance(size, (int, np.integer)) else [int(s) for s in size]
    starts = [max(0, (length - side) // 2) for length, side in zip(array.shape, sides)]
    region = tuple(slice(start, start + min(side, length)) for start, side, length in zip(starts, sides, array.shape))
    return np.ascontiguousarray(array[region])
