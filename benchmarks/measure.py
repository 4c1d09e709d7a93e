"""One codec setting on one volume: encode, decode, check, measure.

Every setting runs once, in this process, on the same in-memory volume. Encode and decode
are timed separately (``time.perf_counter`` wall clock) and their peak memory measured
separately (:class:`~benchmarks.metrics.PeakMemory`). Lossless and near-lossless settings
are checked against their bound on the decoded voxels.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import metrics
from .codecs import CodecSetting
from .volumes import BenchVolume

__all__ = ["BoundViolation", "Record", "measure"]


class BoundViolation(AssertionError):
    """A baseline broke its lossless / NEAR guarantee: a bug in its adapter."""


@dataclass
class Record:
    """What one setting achieved on one volume (one row of ``results.json``).

    Attributes:
        volume: Volume name.
        modality: ``"CT"``, ``"MR"`` or ``"other"``.
        codec: Codec family.
        mode: ``"lossless"``, ``"near-lossless"`` or ``"lossy"``.
        param: The setting, e.g. ``"NEAR=2"``.
        value: Swept number (quality, NEAR, distance, target), None if single.
        bound: Guaranteed max abs error, None for lossy.
        nbytes: Compressed bytes.
        bpv: Bits per voxel.
        ratio: Raw bytes / compressed bytes.
        psnr: dB over the original max - min; inf when exact.
        ssim: 3D SSIM (1.0 when exact, None when not computed).
        ssim_slices: ``"z0:z1"`` slab SSIM was computed on (whole in-plane), None = all.
        max_abs_error: Largest voxel error.
        exact: Decoded voxels equal the original bit for bit (dtype included).
        bound_ok: The bound held (None for lossy).
        enc_s, dec_s: Wall-clock seconds.
        enc_mbps, dec_mbps: Raw MB/s.
        enc_peak_mb, dec_peak_mb: Peak memory growth in MB (10^6 bytes).
        error: The exception text when a non-strict codec failed; other fields are then None.
    """

    volume: str
    modality: str
    codec: str
    mode: str
    param: str
    value: float | None
    bound: int | None
    nbytes: int | None = None
    bpv: float | None = None
    ratio: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    ssim_slices: str | None = None
    max_abs_error: float | None = None
    exact: bool | None = None
    bound_ok: bool | None = None
    enc_s: float | None = None
    dec_s: float | None = None
    enc_mbps: float | None = None
    dec_mbps: float | None = None
    enc_peak_mb: float | None = None
    dec_peak_mb: float | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        """Setting label, as :attr:`CodecSetting.key`."""
        return f"{self.codec} {self.param}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: inf (exact PSNR) and nan become None; ``exact`` says which."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_json` (an exact record gets its infinite PSNR back)."""
        rec = cls(**row)
        if rec.exact and rec.psnr is None:
            rec.psnr = math.inf
        return rec


def measure(
    setting: CodecSetting, vol: BenchVolume, *, ssim_max_voxels: int | None = None, compute_ssim: bool = True
) -> tuple[Record, np.ndarray | None]:
    """Run one setting on one volume.

    Args:
        setting: Codec setting.
        vol: Volume.
        ssim_max_voxels: SSIM on the central slab of at most this many voxels
            (see :func:`~benchmarks.metrics.ssim_region`); None for the whole volume.
        compute_ssim: False skips SSIM (``ssim`` stays None).

    Returns:
        The record and the decoded middle slice (for figures; None on failure).

    Raises:
        BoundViolation: A strict (baseline) setting broke its bound.
        Exception: Whatever a strict setting's codec raised.
    """
    rec = Record(vol.name, vol.modality, setting.codec, setting.mode, setting.param, setting.value, setting.bound)
    try:
        with metrics.PeakMemory() as enc_mem:
            t0 = time.perf_counter()
            enc = setting.codec_impl.encode(vol)
            enc_s = time.perf_counter() - t0
        with metrics.PeakMemory() as dec_mem:
            t0 = time.perf_counter()
            decoded = setting.codec_impl.decode(enc)
            dec_s = time.perf_counter() - t0
    except Exception as exc:
        if setting.strict:
            raise
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec, None

    original = vol.array
    if decoded.shape != original.shape:
        rec.error = f"decoded shape {decoded.shape} != original {original.shape}"
        if setting.strict:
            raise BoundViolation(f"{setting.key} on {vol.name}: {rec.error}")
        return rec, None
    rec.nbytes = enc.nbytes
    rec.bpv = metrics.bits_per_voxel(enc.nbytes, vol.voxels)
    rec.ratio = metrics.compression_ratio(vol.raw_bytes, enc.nbytes)
    rec.exact = bool(decoded.dtype == original.dtype and np.array_equal(decoded, original))
    rec.max_abs_error = 0.0 if rec.exact else metrics.max_abs_error(original, decoded)
    rec.psnr = math.inf if rec.exact else metrics.psnr(original, decoded)
    if rec.exact:
        rec.ssim = 1.0
    elif compute_ssim:
        rec.ssim = metrics.ssim_3d(original, decoded, data_range=vol.data_range, max_voxels=ssim_max_voxels)
        if ssim_max_voxels is not None:
            zs = metrics.ssim_region(original.shape, ssim_max_voxels)[0]
            if zs.stop - zs.start < original.shape[0]:
                rec.ssim_slices = f"{zs.start}:{zs.stop}"
    if setting.bound is not None:
        rec.bound_ok = rec.exact if setting.bound == 0 else rec.max_abs_error <= setting.bound
        if not rec.bound_ok and setting.strict:
            raise BoundViolation(
                f"{setting.key} on {vol.name}: max abs error {rec.max_abs_error} "
                f"> bound {setting.bound} (exact={rec.exact})"
            )
    rec.enc_s, rec.dec_s = enc_s, dec_s
    rec.enc_mbps = metrics.megabytes_per_second(vol.raw_bytes, enc_s)
    rec.dec_mbps = metrics.megabytes_per_second(vol.raw_bytes, dec_s)
    rec.enc_peak_mb = enc_mem.peak_bytes / 1e6
    rec.dec_peak_mb = dec_mem.peak_bytes / 1e6
    return rec, np.array(decoded[decoded.shape[0] // 2])
