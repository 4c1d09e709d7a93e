"""Volumes larger than memory: coding from a file and decoding to one, a z-slab of tiles at a time.

:func:`compress_file` reads an uncompressed NIfTI (``.nii``) or a ``.npy`` file slab by
slab (explicit reads, no memory map, so resident memory stays at a few slabs whatever the
volume's size), writes each tile's chunk as soon as it is coded and the header last, into
its reserved place. :func:`decompress_file` checks the stream chunk by chunk without keeping
payloads, decodes one z-slab of tiles at a time and writes it where it belongs in an
uncompressed ``.nii`` or a ``.npy``. Both write through a temporary file and rename it, so a
failure leaves nothing behind. The streams are the ones :func:`medcodec.compress` writes for
the same voxels, geometry and metadata, byte for byte.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..codec import (
    _WORKERS,
    _check_stored_digests,
    _Coding,
    _decode_tile,
    _expected_path,
    _parse_metadata,
    _Scan,
    _stream_models,
    _tile_map,
)
from ..coding.predictive import compiled as predictive_compiled
from ..errors import CorruptStreamError, InvalidInputError, VolumeIOError
from ..format.container import END, Chunk, Header, chunk_bytes, header_block, scan_stream
from ..format.tile import DIGEST_BYTES, TilePath
from ..volume import Volume
from .atomic import write_atomic

__all__ = ["compress_file", "decompress_file", "readable", "FILE_SUFFIXES"]

#: Files the out-of-core functions read and write.
FILE_SUFFIXES = (".nii", ".npy")
_NIFTI_CODES = {
    "uint8": 2,
    "int16": 4,
    "int32": 8,
    "float32": 16,
    "float64": 64,
    "int8": 256,
    "uint16": 512,
    "uint32": 768,
}
_NIFTI_DTYPES = {v: k for k, v in _NIFTI_CODES.items()}

Progress = Callable[[int, int], None]


class _Source:
    """The voxels of an uncompressed file: (z, y, x) C order at ``offset``, read slab by slab."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()  # the two tile threads share the slabs

    def slab(self, z0: int, z1: int) -> np.ndarray:
        with self._lock:
            return self._slab(z0, z1)

    def _slab(self, z0: int, z1: int) -> np.ndarray:
        key = (z0, z1)
        if key not in self._cache:
            plane = self.shape[1] * self.shape[2]
            with open(self.path, "rb") as f:
                f.seek(self.offset + z0 * plane * self.dtype.itemsize)
                a = np.fromfile(f, dtype=self.dtype, count=(z1 - z0) * plane)
            if a.size != (z1 - z0) * plane:
                raise VolumeIOError(f"{self.path} ends before its voxels do")
            while len(self._cache) >= 3:  # the two tile threads work on at most two slabs
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = a.reshape(z1 - z0, *self.shape[1:]).astype(self.dtype.newbyteorder("="))
        return self._cache[key]

    def tile(self, t: tuple[slice, ...]) -> np.ndarray:
        return np.ascontiguousarray(self.slab(t[0].start, t[0].stop)[:, t[1], t[2]])


def _open_source(path: Path) -> tuple[_Source, Volume]:
    """The voxel source and the geometry and metadata (an empty array) of an input file."""
    name = path.name.lower()
    if name.endswith(".npy"):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
        if fortran or len(shape) != 3:
            raise InvalidInputError(f"{path}: a C-ordered 3D array is needed, got shape {shape}")
        return _Source(path, tuple(shape), np.dtype(dtype), offset), Volume(np.zeros((1, 1, 1), dtype))
    if not name.endswith(".nii"):
        raise InvalidInputError(f"{path.name!r}: volumes larger than memory are read from .nii (uncompressed) or .npy")
    import SimpleITK as sitk

    from .images import file_metadata

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # geometry and header fields, no voxels
    except RuntimeError as exc:
        raise VolumeIOError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from None
    with open(path, "rb") as f:
        raw = f.read(348)
    order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(order + "i", raw[:4])[0] != 348:
        raise InvalidInputError(f"{path}: only NIfTI-1 files are read in slabs")
    dims = struct.unpack(order + "8h", raw[40:56])
    code = struct.unpack(order + "h", raw[70:72])[0]
    offset = int(struct.unpack(order + "f", raw[108:112])[0])
    slope, inter = struct.unpack(order + "2f", raw[112:120])
    if dims[0] != 3 or code not in _NIFTI_DTYPES or slope not in (0.0, 1.0) or inter != 0.0:
        raise InvalidInputError(f"{path}: a 3D NIfTI of a plain sample type without intensity scaling is needed")
    shape = (dims[3], dims[2], dims[1])
    meta = file_metadata(reader)
    dtype = np.dtype(_NIFTI_DTYPES[code]).newbyteorder(order)
    geometry = Volume(
        np.zeros((1, 1, 1), dtype.newbyteorder("=")),
        reader.GetSpacing(),
        reader.GetOrigin(),
        reader.GetDirection(),
        meta,
    )
    return _Source(path, shape, dtype, offset), geometry


def readable(path: str | os.PathLike) -> bool:
    """Whether :func:`compress_file` can read ``path`` slab by slab (a plain, unscaled layout)."""
    try:
        _open_source(Path(path))
    except (InvalidInputError, VolumeIOError):
        return False
    return True


def compress_file(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    quality: int | None = None,
    max_error: float | None = None,
    model: str | None = None,
    tables: str | os.PathLike | None = None,
    progress: Progress | None = None,
    force: bool = False,
    metadata: Callable[[dict], dict] | None = None,
) -> Header:
    """Compress a volume file too large for memory into a stream file; options as :func:`medcodec.compress`.

    Args:
        metadata: Applied to the file's metadata before it is stored (to strip or anonymize it).

    Returns:
        The stream's header.
    """
    from ..codec import _check_options

    _check_options(quality, max_error)
    src, geometry = _open_source(Path(source))
    if metadata is not None:
        geometry.metadata = metadata(dict(geometry.metadata))
    scan = _Scan()
    step = 64
    for z in range(0, src.shape[0], step):
        scan.add(src.slab(z, min(src.shape[0], z + step)))
        src._cache.clear()  # the first pass keeps nothing
    dtype = src.dtype.newbyteorder("=")
    coding = _Coding.start(geometry, src.shape, dtype, scan, quality, max_error, model, tables)

    def write(tmp: Path) -> None:
        placeholder = len(header_block(coding.header()))
        with open(tmp, "wb") as f:
            f.write(bytes(placeholder))
            for c in coding.leading_chunks():
                f.write(chunk_bytes(c))
            for payload in coding.tiles(src.tile, progress):
                f.write(chunk_bytes(Chunk(b"TILE", payload)))
            f.write(chunk_bytes(END))
            f.seek(0)
            f.write(header_block(coding.header()))  # the voxel checksum is known now

    write_atomic(Path(dest), write, force=force)
    return coding.header()


def _nifti_header(vol: Volume, shape: tuple[int, int, int], dtype: np.dtype) -> bytes:
    """A NIfTI-1 header (and the 4 extension bytes) placing ``shape`` voxels as ``vol`` does."""
    if str(dtype) not in _NIFTI_CODES:
        raise InvalidInputError(f"NIfTI has no sample type for {dtype}")
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, shape[2], shape[1], shape[0], 1, 1, 1, 1)
    struct.pack_into("<2h", h, 70, _NIFTI_CODES[str(dtype)], dtype.itemsize * 8)
    struct.pack_into("<8f", h, 76, 1.0, *vol.spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<2f", h, 112, 1.0, 0.0)  # no intensity scaling
    h[123] = 2  # xyzt_units: millimetres
    # ITK's LPS geometry as NIfTI's RAS sform: x and y flip.
    d = np.array(vol.direction, dtype=np.float64).reshape(3, 3) * np.array(vol.spacing)
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.hstack([flip @ d, (flip @ np.array(vol.origin))[:, None]])
    struct.pack_into("<2h", h, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    struct.pack_into("<12f", h, 280, *affine.ravel())
    h[344:348] = b"n+1\0"
    return bytes(h)


def decompress_file(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    model: str | None = None,
    tables: str | os.PathLike | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> Header:
    """Decode a stream file into an uncompressed ``.nii`` (or ``.npy``) a z-slab at a time.

    Returns:
        The stream's header.

    Raises:
        The errors of :func:`medcodec.decompress`.
    """
    source, dest = Path(source), Path(dest)
    name = dest.name.lower()
    if not name.endswith(FILE_SUFFIXES):
        raise InvalidInputError(f"{dest.name!r}: volumes larger than memory are written as .nii (uncompressed) or .npy")
    with open(source, "rb") as f:
        header, index = scan_stream(f)
        tiles_at = [(off, n) for kind, off, n in index if kind == b"TILE"]
        meta = next(((off, n) for kind, off, n in index if kind == b"meta"), None)
        if len(tiles_at) != header.n_tiles:
            raise CorruptStreamError(f"stream holds {len(tiles_at)} tiles, its header announces {header.n_tiles}")
        stored = []
        for off, n in tiles_at:
            f.seek(off + n - DIGEST_BYTES)
            stored.append(f.read(DIGEST_BYTES))
        _check_stored_digests(stored, header)
        metadata = {}
        if meta is not None:
            f.seek(meta[0])
            metadata = _parse_metadata(f.read(meta[1]))
    from ..codec import tile_grid

    dtype = np.dtype(header.dtype)
    expected = _expected_path(header, dtype.kind != "f")
    codec_model, prior = _stream_models(header, expected, model, tables)
    grid = tile_grid(header.shape, header.tile)
    vol = Volume(np.zeros((1, 1, 1), dtype), header.spacing, header.origin, header.direction, metadata)
    plane = header.shape[1] * header.shape[2]

    def payload(i: int) -> bytes:
        with open(source, "rb") as f:
            f.seek(tiles_at[i][0])
            return f.read(tiles_at[i][1])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            if name.endswith(".npy"):
                np.lib.format.write_array_header_1_0(
                    out,
                    {
                        "descr": np.lib.format.dtype_to_descr(dtype.newbyteorder("<")),
                        "fortran_order": False,
                        "shape": header.shape,
                    },
                )
            else:
                out.write(_nifti_header(vol, header.shape, dtype))
            start = out.tell()
            slabs = sorted({(t[0].start, t[0].stop) for t in grid})
            done = 0
            for z0, z1 in slabs:
                ids = [i for i, t in enumerate(grid) if t[0].start == z0]
                slab = np.empty((z1 - z0, *header.shape[1:]), dtype=dtype)
                parallel = expected == TilePath.PREDICTIVE and predictive_compiled() and _WORKERS > 1
                decoded = _tile_map(
                    lambda k, ids=ids: _decode_tile(
                        ids[k], grid[ids[k]], payload(ids[k]), header, expected, codec_model, prior
                    ),
                    range(len(ids)),
                    parallel,
                )
                for k, (recon, _) in enumerate(decoded):
                    t = grid[ids[k]]
                    slab[:, t[1], t[2]] = recon
                    done += 1
                    if progress:
                        progress(done, len(grid))
                out.seek(start + z0 * plane * dtype.itemsize)
                out.write(slab.astype(dtype.newbyteorder("<")).tobytes())

    write_atomic(dest, write, force=force)
    return header
