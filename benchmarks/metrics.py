"""Rate, distortion, speed and memory measures.

Definitions (docs: ``benchmarks/README.md``):
    bpv: bits per voxel, ``8 * stream bytes / voxels``.
    ratio: raw bytes of the original dtype / stream bytes.
    PSNR: ``10 log10((max - min)^2 / MSE)`` over the *original* volume's own range,
        MSE over all voxels in float64.
    SSIM: 3D, :func:`skimage.metrics.structural_similarity` with ``data_range = max - min``
        on float64.
    MB/s: raw voxel bytes (1 MB = 10^6 bytes) / wall-clock seconds.
"""

from __future__ import annotations

import ctypes
import math
import tracemalloc
from types import TracebackType

import numpy as np

__all__ = [
    "PeakMemory",
    "bits_per_voxel",
    "compression_ratio",
    "max_abs_error",
    "mean_squared_error",
    "megabytes_per_second",
    "psnr",
    "return_freed_memory_to_os",
    "ssim_3d",
    "ssim_region",
]

# Slices per chunk when comparing volumes: bounds float64 temporaries on 100+ MB volumes.
_CHUNK_SLICES = 16


def bits_per_voxel(nbytes: int, voxels: int) -> float:
    """``8 * nbytes / voxels``."""
    return 8.0 * nbytes / voxels


def compression_ratio(raw_bytes: int, nbytes: int) -> float:
    """Raw bytes of the original dtype over compressed bytes."""
    return raw_bytes / nbytes


def megabytes_per_second(raw_bytes: int, seconds: float) -> float:
    """Throughput in MB (10^6 bytes) of raw voxels per second; inf for a zero duration."""
    return raw_bytes / 1e6 / seconds if seconds > 0 else math.inf


def _check_shapes(original: np.ndarray, decoded: np.ndarray) -> None:
    if original.shape != decoded.shape:
        raise ValueError(f"shape mismatch: original {original.shape}, decoded {decoded.shape}")


def mean_squared_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """MSE over all voxels, computed in float64."""
    _check_shapes(original, decoded)
    total = 0.0
    for z in range(0, original.shape[0], _CHUNK_SLICES):
        d = original[z : z + _CHUNK_SLICES].astype(np.float64) - decoded[z : z + _CHUNK_SLICES]
        d = d.ravel()
        total += float(np.dot(d, d))
    return total / original.size


def max_abs_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """Largest absolute voxel difference (float64, so integer extremes cannot overflow)."""
    _check_shapes(original, decoded)
    worst = 0.0
    for z in range(0, original.shape[0], _CHUNK_SLICES):
        d = original[z : z + _CHUNK_SLICES].astype(np.float64) - decoded[z : z + _CHUNK_SLICES]
        worst = max(worst, float(np.abs(d).max(initial=0.0)))
    return worst


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over the original's ``max - min``.

    Returns:
        inf when the decoded volume is exact; nan for a constant original that was not
        reproduced exactly (the peak is 0, so PSNR is undefined).
    """
    mse = mean_squared_error(original, decoded)
    if mse == 0.0:
        return math.inf
    peak = float(original.max()) - float(original.min())
    if peak == 0.0:
        return math.nan
    return 10.0 * math.log10(peak * peak / mse)


def ssim_region(shape: tuple[int, ...], max_voxels: int) -> tuple[slice, slice, slice]:
    """The deterministic block SSIM is computed on: the whole volume if it has at most
    ``max_voxels`` voxels, else the central slab of whole slices that fits (at least 7)."""
    z, y, x = shape
    if z * y * x <= max_voxels:
        return slice(0, z), slice(0, y), slice(0, x)
    nz = min(z, max(7, max_voxels // (y * x)))
    start = (z - nz) // 2
    return slice(start, start + nz), slice(0, y), slice(0, x)


def ssim_3d(
    original: np.ndarray, decoded: np.ndarray, *, data_range: float | None = None, max_voxels: int | None = None
) -> float | None:
    """3D SSIM (skimage, Gaussian-free 7-voxel uniform window) on float64.

    Args:
        original: Reference volume (z, y, x).
        decoded: Reconstruction, same shape.
        data_range: ``max - min``; by default that of the whole original (not of the block).
        max_voxels: Compute on :func:`ssim_region` of this size instead of the whole volume.

    Returns:
        SSIM, or None when the volume is too thin for a 3-voxel window or constant.
    """
    from skimage.metrics import structural_similarity

    _check_shapes(original, decoded)
    if data_range is None:
        data_range = float(original.max()) - float(original.min())
    if data_range == 0.0:
        return None
    if max_voxels is not None:
        region = ssim_region(original.shape, max_voxels)
        original, decoded = original[region], decoded[region]
    win = min(7, min(original.shape))
    win -= 1 - win % 2  # skimage needs an odd window
    if win < 3:
        return None
    return float(
        structural_similarity(
            original.astype(np.float64), decoded.astype(np.float64), data_range=data_range, win_size=win
        )
    )


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def return_freed_memory_to_os() -> bool:
    """Make glibc hand freed memory back to the OS, so peak-RSS deltas see every allocation.

    By default glibc raises its mmap threshold after the first large free and then serves
    later large buffers from heap memory that stays resident, which a peak-RSS delta cannot
    see. Fixing the mmap and trim thresholds at 128 KiB makes each large buffer a fresh
    mapping, as in a new process. Process-wide: the benchmark command calls it once.

    Returns:
        False where the allocator is not glibc (nothing changed).
    """
    if _LIBC is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    _LIBC.mallopt(m_mmap_threshold, 128 * 1024)
    _LIBC.mallopt(m_trim_threshold, 128 * 1024)
    return True


def _rss_available() -> bool:
    try:
        _reset_peak_rss()
        _proc_status_kb("VmHWM")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: peak memory growth (bytes) while its block runs.

    Method ``"rss"`` (Linux): the process's peak resident set size (``VmHWM``, reset through
    ``/proc/self/clear_refs``) minus its RSS on entry. It sees native allocations (OpenJPEG,
    libjxl, torch) that tracemalloc misses. Memory the allocator reuses from earlier frees is
    not counted, so it is a lower bound; :func:`return_freed_memory_to_os` makes it close.
    Elsewhere the method is ``"tracemalloc"``: Python-level allocations only.

    Example:
        >>> with PeakMemory() as mem:
        ...     _ = bytearray(10**7)
        >>> mem.peak_bytes >= 0
        True
    """

    method: str = "rss" if _rss_available() else "tracemalloc"

    def __init__(self) -> None:
        self.peak_bytes: int = 0
        self._base = 0
        self._started_tracemalloc = False

    def __enter__(self) -> PeakMemory:
        if self.method == "rss":
            if _LIBC is not None:
                _LIBC.malloc_trim(0)  # start from the smallest RSS the heap allows
            _reset_peak_rss()
            self._base = _proc_status_kb("VmRSS") * 1024
        else:
            if not tracemalloc.is_tracing():
                tracemalloc.start()
                self._started_tracemalloc = True
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.method == "rss":
            peak = _proc_status_kb("VmHWM") * 1024
        else:
            peak = tracemalloc.get_traced_memory()[1]
            if self._started_tracemalloc:
                tracemalloc.stop()
        self.peak_bytes = max(0, peak - self._base)
