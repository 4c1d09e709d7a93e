"""Codec adapters: every codec under test behind one ``encode`` / ``decode`` shape.

Baselines:
    gzip-6: the raw voxel bytes gzipped at level 6, i.e. what ``.nii.gz`` stores.
    zstd-19: the raw voxel bytes through Zstandard level 19.
    JPEG 2000: OpenJPEG via ``imagecodecs.jpeg2k_*``; lossless (reversible 5/3) and a
        sweep of OpenJPEG's fixed-quality PSNR target (irreversible 9/7).
    HTJ2K: ``imagecodecs.htj2k_*`` (OpenJPH), lossless.
    JPEG-LS: CharLS via ``imagecodecs.jpegls_*``, lossless and NEAR = 1, 2, 4.
    JPEG XL: libjxl via ``imagecodecs.jpegxl_*`` at effort 7, lossless and a distance sweep.

Peer codecs, each optional (skipped with a reason when its package is not installed):
    tomoz: learned lossless coder for medical volumes (``tomoz.encode`` / ``decode``), on the
        whole 3D volume with its built-in models.
    SZ3: the error-bounded compressor through ``pysz`` (``pysz.sz.compress`` / ``decompress``),
        on the whole 3D volume, absolute error bound ABS = 1, 2, 4 (the JPEG-LS NEAR values).

The image codecs run slice by slice, one independent stream per (y, x) slice, as DICOM
stores frames. They get unsigned voxels: every integer volume is shifted by ``-min`` into
the smallest unsigned type that holds ``max - min`` (uint8 or uint16; wider ranges and float
volumes are skipped). The shift, shape and dtype are side information stored for free; only
codec bytes count. The 3D peers get the volume in a type their library takes (see
:class:`TomozCodec`, :class:`SZ3Codec`), with the same free side information.

medcodec is called only through its public API (``medcodec.compress`` / ``decompress``).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from .volumes import BenchVolume

try:
    import imagecodecs
except ImportError:  # the harness still runs gzip / zstd / medcodec without it
    imagecodecs = None
try:
    import tomoz
except ImportError:  # optional peer: skipped with a reason
    tomoz = None
try:
    import pysz
except ImportError:  # optional peer (SZ3): skipped with a reason
    pysz = None

__all__ = [
    "CODEC_ORDER",
    "Codec",
    "CodecSetting",
    "Encoded",
    "GZIP",
    "HTJ2K",
    "JPEG2000",
    "JPEGLS",
    "JPEGXL",
    "MEDCODEC",
    "SZ3",
    "TOMOZ",
    "ZSTD",
    "baseline_settings",
    "medcodec_settings",
    "medcodec_status",
    "versions",
]

GZIP, ZSTD, JPEG2000, HTJ2K, JPEGLS, JPEGXL, TOMOZ, SZ3, MEDCODEC = (
    "gzip-6",
    "zstd-19",
    "JPEG 2000",
    "HTJ2K",
    "JPEG-LS",
    "JPEG XL",
    "tomoz",
    "SZ3",
    "medcodec",
)
#: Column order of every table (tomoz beside JPEG XL, SZ3 beside JPEG-LS's NEAR columns).
CODEC_ORDER = (GZIP, ZSTD, JPEG2000, HTJ2K, JPEGLS, JPEGXL, TOMOZ, SZ3, MEDCODEC)

#: JPEG 2000 sweep: PSNR targets in dB over the volume's max - min (see SliceCodec).
JPEG2000_PSNR_TARGETS = (30, 35, 40, 45, 50, 55, 60, 65, 70, 75)
#: JPEG XL sweep: butteraugli distances (smaller is better quality).
JPEGXL_DISTANCES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
JPEGLS_NEARS = (1, 2, 4)
#: SZ3 absolute error bounds: the JPEG-LS NEAR values, for a comparison at equal bound.
SZ3_ABS_BOUNDS = JPEGLS_NEARS
MEDCODEC_QUALITIES = (10, 25, 40, 55, 70, 85, 95)
MEDCODEC_MAX_ERRORS = (0, 1, 2, 4)
JPEGXL_EFFORT = 7

# --quick: fewer points, enough for a curve of three.
QUICK_JPEG2000_PSNR_TARGETS = (40, 50, 60)
QUICK_JPEGXL_DISTANCES = (0.1, 0.5, 2.0)
QUICK_MEDCODEC_QUALITIES = (25, 70)
QUICK_MEDCODEC_MAX_ERRORS = (0, 2)


@dataclass
class Encoded:
    """A compressed volume: codec bytes plus free side information.

    Attributes:
        chunks: The codec's streams (one per slice for 2D codecs); all their bytes count.
        shape: Original shape (free).
        dtype: Original dtype (free).
        shift: Offset added before a codec that needs unsigned input (free).
    """

    chunks: list[bytes]
    shape: tuple[int, ...]
    dtype: np.dtype
    shift: int = 0

    @property
    def nbytes(self) -> int:
        """Total codec bytes."""
        return sum(len(c) for c in self.chunks)


class Codec(Protocol):
    """What every adapter provides."""

    def unsupported(self, vol: BenchVolume) -> str | None:
        """Why this codec cannot take ``vol`` (None when it can)."""

    def encode(self, vol: BenchVolume) -> Encoded:
        """Compress a volume."""

    def decode(self, enc: Encoded) -> np.ndarray:
        """Decompress to an array of the original shape and dtype."""


class RawBytesCodec:
    """A general-purpose byte compressor over the raw voxel bytes (C order, native endian)."""

    def __init__(self, compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]):
        self._compress, self._decompress = compress, decompress

    def unsupported(self, vol: BenchVolume) -> str | None:
        return None

    def encode(self, vol: BenchVolume) -> Encoded:
        return Encoded([self._compress(vol.array.tobytes())], vol.array.shape, vol.array.dtype)

    def decode(self, enc: Encoded) -> np.ndarray:
        return np.frombuffer(self._decompress(enc.chunks[0]), enc.dtype).reshape(enc.shape)


def _unsigned_target(array: np.ndarray) -> tuple[np.dtype, int] | str:
    """(unsigned dtype, shift) a 2D codec gets for ``array``, or why it cannot."""
    if array.dtype.kind not in "iu":
        return f"needs integer voxels, got {array.dtype}"
    lo, hi = int(array.min()), int(array.max())
    if hi - lo > np.iinfo(np.uint16).max:
        return f"range {lo}..{hi} does not fit 16 bits"
    # The smallest type that holds max - min: a codec's precision (JPEG-LS MAXVAL, JPEG XL's
    # nominal range) follows the sample type, and a 16-bit type for 8-bit data costs bits.
    return np.dtype(np.uint8 if hi - lo <= np.iinfo(np.uint8).max else np.uint16), -lo


#: Encodes one unsigned 2D slice.
SliceEncoder = Callable[[np.ndarray], bytes]
#: Makes the slice encoder for a volume from (unsigned dtype, data range).
EncoderFactory = Callable[[np.dtype, float], SliceEncoder]


class SliceCodec:
    """A 2D image codec run slice by slice on unsigned voxels.

    Args:
        make_encoder: Given (unsigned dtype, data range), returns the per-slice encoder;
            the two let a codec turn a target expressed on the volume into its own units.
        decode_slice: Per-slice decoder.
    """

    def __init__(self, make_encoder: EncoderFactory, decode_slice: Callable[[bytes], np.ndarray]):
        self._make_encoder, self._decode_slice = make_encoder, decode_slice

    def unsupported(self, vol: BenchVolume) -> str | None:
        target = _unsigned_target(vol.array)
        return target if isinstance(target, str) else None

    def encode(self, vol: BenchVolume) -> Encoded:
        target = _unsigned_target(vol.array)
        if isinstance(target, str):
            raise ValueError(target)
        dtype, shift = target
        encode_slice = self._make_encoder(dtype, vol.data_range)
        # Converted one slice at a time: a whole-volume int64 copy would cost 4x the volume.
        chunks = [bytes(encode_slice((s.astype(np.int64) + shift).astype(dtype))) for s in vol.array]
        return Encoded(chunks, vol.array.shape, vol.array.dtype, shift)

    def decode(self, enc: Encoded) -> np.ndarray:
        out = np.empty(enc.shape, enc.dtype)
        info = np.iinfo(enc.dtype)
        for z, chunk in enumerate(enc.chunks):
            s = self._decode_slice(chunk).astype(np.int64) - enc.shift
            # A lossy decoder may overshoot the original type's range once unshifted.
            out[z] = np.clip(s, info.min, info.max)
        return out


class MedcodecCodec:
    """medcodec through its public API, with the given ``compress`` keyword arguments.

    The volume is passed with its geometry but without free-form metadata, so the stream
    holds what the baselines hold (voxels) plus medcodec's small header.
    """

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs

    def unsupported(self, vol: BenchVolume) -> str | None:
        return None

    def encode(self, vol: BenchVolume) -> Encoded:
        import medcodec

        mvol = medcodec.Volume(vol.array, vol.spacing, vol.origin, vol.direction)
        return Encoded([bytes(medcodec.compress(mvol, **self.kwargs))], vol.array.shape, vol.array.dtype)

    def decode(self, enc: Encoded) -> np.ndarray:
        import medcodec

        return np.asarray(medcodec.decompress(enc.chunks[0]).array)


#: Sample types tomoz takes as they are.
_TOMOZ_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))


class TomozCodec:
    """tomoz on the whole 3D volume, lossless, with its built-in models and default tiling.

    uint8, int8, uint16 and int16 volumes go in as they are (tomoz codes the values, not the
    type's width: an 8-bit range in int16 costs the same as in uint8); other integer volumes
    are shifted into uint8 / uint16 as for the 2D codecs.
    """

    def unsupported(self, vol: BenchVolume) -> str | None:
        if vol.array.dtype in _TOMOZ_DTYPES:
            return None
        target = _unsigned_target(vol.array)
        return target if isinstance(target, str) else None

    def encode(self, vol: BenchVolume) -> Encoded:
        a = vol.array
        if a.dtype in _TOMOZ_DTYPES:
            return Encoded([bytes(tomoz.encode(a))], a.shape, a.dtype)
        target = _unsigned_target(a)
        if isinstance(target, str):
            raise ValueError(target)
        dtype, shift = target
        return Encoded([bytes(tomoz.encode((a.astype(np.int64) + shift).astype(dtype)))], a.shape, a.dtype, shift)

    def decode(self, enc: Encoded) -> np.ndarray:
        out = np.asarray(tomoz.decode(enc.chunks[0])).reshape(enc.shape)
        if enc.shift == 0 and out.dtype == enc.dtype:
            return out
        return (out.astype(np.int64) - enc.shift).astype(enc.dtype)


class SZ3Codec:
    """SZ3 through ``pysz`` on the whole 3D volume, absolute error bound ``abs_bound``.

    Integer voxels go in as int32 (int64 for uint32 and int64 volumes), types pysz takes
    natively, so decoded values stay integers; they are clipped to the original dtype's range
    (clipping toward the original only shrinks an error) and cast back. SZ3's defaults
    otherwise (interpolation + Lorenzo predictor, no OpenMP).

    Args:
        abs_bound: ``szConfig.absErrorBound`` with ``szErrorBoundMode.ABS``.
    """

    def __init__(self, abs_bound: int):
        self.abs_bound = abs_bound

    @staticmethod
    def _work_dtype(dtype: np.dtype) -> np.dtype:
        return np.dtype(np.int32 if dtype.itemsize <= 2 or dtype == np.int32 else np.int64)

    def unsupported(self, vol: BenchVolume) -> str | None:
        dtype = vol.array.dtype
        if dtype.kind not in "iu":
            return f"needs integer voxels (the bounds are integer steps), got {dtype}"
        if dtype == np.uint64:
            return "uint64 voxels: pysz takes at most int64"
        return None

    def encode(self, vol: BenchVolume) -> Encoded:
        a = vol.array
        config = pysz.szConfig(a.shape)
        config.errorBoundMode = pysz.szErrorBoundMode.ABS
        config.absErrorBound = float(self.abs_bound)
        compressed, _ = pysz.sz.compress(a.astype(self._work_dtype(a.dtype), copy=False), config)
        return Encoded([compressed.tobytes()], a.shape, a.dtype)

    def decode(self, enc: Encoded) -> np.ndarray:
        out, _ = pysz.sz.decompress(np.frombuffer(enc.chunks[0], np.uint8), self._work_dtype(enc.dtype), enc.shape)
        info = np.iinfo(enc.dtype)
        return np.clip(out.reshape(enc.shape), info.min, info.max).astype(enc.dtype)


@dataclass(frozen=True)
class CodecSetting:
    """One point of one codec's sweep.

    Attributes:
        codec: Codec family (one of :data:`CODEC_ORDER`).
        mode: ``"lossless"``, ``"near-lossless"`` or ``"lossy"``.
        param: Human-readable setting, e.g. ``"NEAR=2"``, ``"distance=0.5"``.
        value: The swept number (None for a codec's single lossless setting).
        bound: Guaranteed max abs error (0 for lossless, NEAR, max_error), None for lossy.
        codec_impl: The adapter.
        strict: A broken guarantee or a crash stops the run (baselines: a harness bug);
            when False it is recorded and reported (medcodec, which is under development, and
            the third-party peers tomoz and SZ3, whose failure should not end a long run).
    """

    codec: str
    mode: str
    param: str
    value: float | None
    bound: int | None
    codec_impl: Codec = field(compare=False, repr=False)
    strict: bool = True

    @property
    def key(self) -> str:
        """Unique label, e.g. ``"JPEG-LS NEAR=2"``."""
        return f"{self.codec} {self.param}"


def _jpeg2k_lossy_encoder(target_db: float) -> EncoderFactory:
    def make(dtype: np.dtype, data_range: float) -> SliceEncoder:
        # OpenJPEG's fixed-quality target is a PSNR over its own peak, 2^bits - 1 of the
        # sample type; offset it so the target reads as PSNR over the volume's max - min.
        peak = float(np.iinfo(dtype).max)
        level = target_db + (20 * math.log10(peak / data_range) if data_range > 0 else 0.0)
        return lambda s: imagecodecs.jpeg2k_encode(s, level=level)

    return make


def _fixed(encode_slice: SliceEncoder) -> EncoderFactory:
    return lambda dtype, data_range: encode_slice


def _jpegls_encoder(near: int) -> SliceEncoder:
    return lambda s: imagecodecs.jpegls_encode(s, level=near)


def _jpegxl_lossy_encoder(distance: float) -> SliceEncoder:
    return lambda s: imagecodecs.jpegxl_encode(s, distance=distance, effort=JPEGXL_EFFORT)


def _available(name: str) -> bool:
    return imagecodecs is not None and bool(getattr(getattr(imagecodecs, name, None), "available", False))


def _imagecodecs_missing(module: str) -> str | None:
    """Why ``imagecodecs.<module>`` cannot be used (None when it can)."""
    if _available(module):
        return None
    if imagecodecs is None:
        return "imagecodecs not installed"
    why = f"imagecodecs.{module} unavailable"
    return why + " (OpenJPEG decodes HTJ2K but cannot encode it)" if module == "HTJ2K" else why


def baseline_settings(
    *, quick: bool = False, codecs: Sequence[str] | None = None
) -> tuple[list[CodecSetting], list[str]]:
    """The baseline and peer settings to measure, and a message for each codec that is skipped.

    Args:
        quick: Fewer lossy points (``--quick``).
        codecs: Only these families (default: all of :data:`CODEC_ORDER` but medcodec).
    """
    import zstandard

    wanted = set(codecs) if codecs is not None else set(CODEC_ORDER) - {MEDCODEC}
    out: list[CodecSetting] = []
    skipped: list[str] = []

    def want(name: str, why_not: str | None) -> bool:
        if name not in wanted:
            return False
        if why_not is not None:
            skipped.append(f"{name} skipped: {why_not}")
            return False
        return True

    if want(GZIP, None):
        gz = RawBytesCodec(lambda b: gzip.compress(b, compresslevel=6, mtime=0), gzip.decompress)
        out.append(CodecSetting(GZIP, "lossless", "level=6", None, 0, gz))
    if want(ZSTD, None):
        zc = RawBytesCodec(zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
        out.append(CodecSetting(ZSTD, "lossless", "level=19", None, 0, zc))
    if want(JPEG2000, _imagecodecs_missing("JPEG2K")):
        dec = imagecodecs.jpeg2k_decode
        out.append(
            CodecSetting(JPEG2000, "lossless", "lossless", None, 0, SliceCodec(_fixed(imagecodecs.jpeg2k_encode), dec))
        )
        for t in QUICK_JPEG2000_PSNR_TARGETS if quick else JPEG2000_PSNR_TARGETS:
            out.append(
                CodecSetting(
                    JPEG2000, "lossy", f"target={t}dB", float(t), None, SliceCodec(_jpeg2k_lossy_encoder(t), dec)
                )
            )
    if want(HTJ2K, _imagecodecs_missing("HTJ2K")):
        out.append(
            CodecSetting(
                HTJ2K,
                "lossless",
                "lossless",
                None,
                0,
                SliceCodec(_fixed(imagecodecs.htj2k_encode), imagecodecs.htj2k_decode),
            )
        )
    if want(JPEGLS, _imagecodecs_missing("JPEGLS")):
        for near in (0, *JPEGLS_NEARS):
            mode, param = ("lossless", "lossless") if near == 0 else ("near-lossless", f"NEAR={near}")
            out.append(
                CodecSetting(
                    JPEGLS,
                    mode,
                    param,
                    float(near),
                    near,
                    SliceCodec(_fixed(_jpegls_encoder(near)), imagecodecs.jpegls_decode),
                )
            )
    if want(JPEGXL, _imagecodecs_missing("JPEGXL")):
        dec = imagecodecs.jpegxl_decode
        lossless = partial(imagecodecs.jpegxl_encode, lossless=True, effort=JPEGXL_EFFORT)
        out.append(CodecSetting(JPEGXL, "lossless", "lossless", None, 0, SliceCodec(_fixed(lossless), dec)))
        for d in QUICK_JPEGXL_DISTANCES if quick else JPEGXL_DISTANCES:
            out.append(
                CodecSetting(
                    JPEGXL, "lossy", f"distance={d}", float(d), None, SliceCodec(_fixed(_jpegxl_lossy_encoder(d)), dec)
                )
            )
    if want(TOMOZ, None if tomoz is not None else "tomoz not installed"):
        out.append(CodecSetting(TOMOZ, "lossless", "lossless", None, 0, TomozCodec(), strict=False))
    if want(SZ3, None if pysz is not None else "pysz (SZ3) not installed"):
        for b in SZ3_ABS_BOUNDS:
            out.append(CodecSetting(SZ3, "near-lossless", f"ABS={b}", float(b), b, SZ3Codec(b), strict=False))
    return out, skipped


def medcodec_status() -> str | None:
    """None when medcodec imports and has its public API, else why it is skipped."""
    try:
        import medcodec
    except Exception as exc:  # any import-time failure of a package being written
        return f"medcodec skipped: import failed ({type(exc).__name__}: {exc})"
    missing = [n for n in ("compress", "decompress", "Volume") if not hasattr(medcodec, n)]
    if missing:
        return f"medcodec skipped: no {', '.join(missing)} in its API"
    return None


def medcodec_settings(
    qualities: Sequence[int] = MEDCODEC_QUALITIES, max_errors: Sequence[int] = MEDCODEC_MAX_ERRORS
) -> list[CodecSetting]:
    """medcodec's sweep: lossy ``quality=Q`` points and ``max_error=D`` points (D=0 lossless)."""
    out = [
        CodecSetting(MEDCODEC, "lossy", f"quality={q}", float(q), None, MedcodecCodec(quality=int(q)), strict=False)
        for q in qualities
    ]
    for d in max_errors:
        mode, param = ("lossless", "lossless") if d == 0 else ("near-lossless", f"max_error={d}")
        out.append(CodecSetting(MEDCODEC, mode, param, float(d), int(d), MedcodecCodec(max_error=int(d)), strict=False))
    return out


def versions() -> dict[str, str]:
    """Versions of the libraries behind each codec, for the report."""
    import platform

    import zstandard

    out = {"python": platform.python_version(), "numpy": np.__version__, "zstandard": zstandard.__version__}
    if imagecodecs is not None:
        out["imagecodecs"] = imagecodecs.__version__
        for lib in ("jpeg2k", "htj2k", "jpegls", "jpegxl"):
            try:
                out[lib] = getattr(imagecodecs, f"{lib}_version")()
            except Exception:  # a codec compiled out of this imagecodecs build
                pass
    if tomoz is not None:
        out["tomoz"] = tomoz.__version__
    if pysz is not None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out["pysz (SZ3)"] = version("pysz")
        except PackageNotFoundError:  # imported from a source tree
            out["pysz (SZ3)"] = "unknown"
    try:
        import medcodec

        out["medcodec"] = getattr(medcodec, "__version__", "unknown")
    except Exception:
        pass
    return out
