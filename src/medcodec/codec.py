"""compress / decompress / info: the codec's public entry points.

A volume is cut into tiles (:mod:`medcodec.format.tiling`); each tile is coded on its
own path:

* transform (integer volumes, and float volumes holding only integers, in lossy mode):
  the tile is coded by :mod:`medcodec.coding.transform` within the mean squared error of the
  quality's PSNR; at high qualities the predictive coder is tried too and the smaller kept;
* predictive (the same volumes in near-lossless and lossless modes): the tile is coded by
  :mod:`medcodec.coding.predictive` within the mode's bound; no network runs on either;
* learned (float arithmetic; format 1 streams also used it for integers): analysis transform ->
  integer latents -> entropy coding; the integer-exact synthesis transform gives
  the lossy reconstruction, the predictor of the residual layer
  (:mod:`medcodec.coding.residual`), which bounds every voxel's error: by ``max_error``
  in near-lossless and lossless modes, and in lossy mode by the bound a quality
  guarantees (:func:`quality_bound`);
* raw: lossless float volumes whose values are not all integers are stored
  bit-exact as byte planes compressed with zstandard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard

from .coding.entropy import decode_groups, encode_groups, unzstd
from .coding.intensity import normalize, to_voxels
from .coding.predictive import compiled as predictive_compiled
from .coding.predictive import decode_tile as decode_predictive
from .coding.predictive import encode_tile as encode_predictive
from .coding.priors import TablePrior, load_prior, prior_for_stream
from .coding.residual import LEVELS, buckets_for, decode_residual, encode_residual
from .coding.transform import analyse as analyse_transform
from .coding.transform import choose_base, choose_z_levels
from .coding.transform import code_tile as code_transform
from .coding.transform import decode_tile as decode_transform
from .errors import ChecksumError, CorruptStreamError, InvalidInputError, MedcodecError, UnsupportedVersionError
from .format.container import (
    FLAG_INTEGER_VALUED,
    FLAG_PALETTE,
    FLAG_REGIONAL,
    FLAG_TRANSFORM,
    Chunk,
    Header,
    StreamInfo,
    read_header,
    read_stream,
    write_stream,
)
from .format.fixedpoint import GAIN_ONE
from .format.tile import DIGEST_BYTES, TilePath, pack_tile, read_head, read_sections
from .format.tiling import DEFAULT_TILE, pad_edge, tile_grid
from .volume import Volume, as_volume

if TYPE_CHECKING:
    from .model.files import CodecModel

__all__ = ["compress", "decompress", "encode", "decode", "info", "integer_valued", "DEFAULT_QUALITY", "quality_gain"]

#: Quality used when neither ``quality`` nor ``max_error`` is given: PSNR >= 40 dB.
DEFAULT_QUALITY = 40
#: Highest latent quality the predictor uses, in every mode: above it the latents cost more
#: bits than they save in the residual layer (measured on the test split, benchmarks/RESULTS.md).
PREDICTOR_QUALITY = 25

#: A lossless fractional-float volume with at most this many distinct values (bit patterns)
#: is coded as a palette and the indices of its voxels (path 4, format 3.0).
PALETTE_LIMIT = 1 << 16
#: In lossy mode a tile whose bound is at most this is also coded by the predictive coder, and
#: the smaller section kept: at such bounds an error-bounded coder can cost less than the transform.
BOTH_CODERS_BOUND = 3
#: The transform's z levels where a tile's slices correlate (chosen per tile against none).
Z_LEVELS = 2
Progress = Callable[[int, int], None]
#: Threads that encode numpy-only tiles at once.
_WORKERS = min(2, os.cpu_count() or 1)


def quality_gain(quality: int) -> int:
    """Latent gain for a quality (1-100), as the integer ``gain * 2**16`` recorded in the stream."""
    return int(round(2.0 ** ((quality - 50) / 12.5) * GAIN_ONE))


def quality_psnr(quality: int) -> float:
    """The PSNR (dB, over the volume's max - min) that a lossy quality guarantees: 20 + quality / 2."""
    return 20.0 + quality / 2.0


def quality_bound(quality: int, lo: float, hi: float, integer: bool) -> float:
    """The largest voxel error a lossy quality allows: ``(hi - lo) * 10**(-quality_psnr / 20)``.

    Every voxel within it means the mean squared error is at most its square, so the PSNR
    is at least :func:`quality_psnr`. Integer volumes use its floor.
    """
    d = (hi - lo) * 10.0 ** (-quality_psnr(quality) / 20.0)
    return float(math.floor(d)) if integer else d


@dataclass(frozen=True)
class _Plan:
    """Everything tile coding needs to know about the whole volume."""

    dtype: np.dtype
    mode: str
    bound: float  # the error bound; for integer arithmetic its floor is used
    integer: bool  # integer arithmetic (integer dtypes, or floats holding only integers)
    raw: bool  # lossless floats with fractional values
    lo: float
    hi: float
    gain_num: int
    palette: bool = False  # raw, and few distinct values: a palette and indices instead of byte planes
    mse: float = 0.0  # lossy integers: the largest mean squared error a tile may have (0: no transform)
    base: float = 0.0  # the transform's base step, one for the volume


#: Largest metadata chunk content (JSON bytes) a stream may hold, and most entries.
METADATA_LIMIT, METADATA_ENTRIES = 64 << 20, 1 << 16
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_SKELETON = re.compile(rb'\{(?:"":""(?:,"":"")*)?\}')


def _check_options(quality, max_error) -> None:
    if quality is not None and max_error is not None:
        raise InvalidInputError("quality and max_error are mutually exclusive: give one of them")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= quality <= 100
    ):
        raise InvalidInputError(f"quality must be an integer from 1 to 100, got {quality!r}")
    if max_error is not None and (
        isinstance(max_error, bool)
        or not isinstance(max_error, numbers.Real)
        or not math.isfinite(max_error)
        or max_error < 0
    ):
        raise InvalidInputError(f"max_error must be a finite number >= 0, got {max_error!r}")


def integer_valued(a: np.ndarray) -> bool:
    """Whether a float volume holds only integers that its dtype represents exactly (and no -0.0)."""
    # float32 holds integers exactly up to 2**24; the integer path keeps spans below 2**32.
    limit = 2.0**24 if a.dtype == np.float32 else 2.0**31
    if not np.isfinite(a).all() or np.abs(a).max() > limit:
        return False
    return bool((np.floor(a) == a).all() and not (np.signbit(a) & (a == 0)).any())


@dataclass
class _Scan:
    """What the plan needs to know of a volume's values, gathered slab by slab."""

    lo: float = math.inf
    hi: float = -math.inf
    integer_valued: bool = True  # floats only: every value an exactly held integer
    finite: bool = True
    patterns: np.ndarray | None = field(
        default_factory=lambda: np.zeros(0, np.uint64)
    )  # floats: distinct bits, until too many

    def add(self, a: np.ndarray) -> None:
        if a.dtype.kind == "f" and self.patterns is not None:
            bits = np.unique(_bits(a))
            self.patterns = np.union1d(self.patterns, bits.astype(np.uint64))
            if self.patterns.size > PALETTE_LIMIT:
                self.patterns = None
        if a.dtype.kind == "f":
            finite = bool(np.isfinite(a).all())
            self.finite &= finite
            self.integer_valued &= finite and integer_valued(a)
            if not finite:
                return  # a span with NaN or inf is never planned on (lossless raw, or an error)
        if a.size:
            self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))


def _plan(dtype: np.dtype, scan: _Scan, quality: int | None, max_error: float | None) -> _Plan:
    is_float = dtype.kind == "f"
    mode = "lossy" if max_error is None else "lossless" if max_error == 0 else "near-lossless"
    integer = not is_float or scan.integer_valued
    if is_float and not integer and mode != "lossless" and not scan.finite:
        raise InvalidInputError("volume holds NaN or infinite values: only lossless (max_error=0) can store them")
    raw = is_float and not integer and mode == "lossless"
    if raw:
        lo = hi = 0.0
    else:
        lo, hi = scan.lo, scan.hi
    if mode != "lossless" and not math.isfinite(hi - lo):
        raise InvalidInputError(
            f"volume spans {lo:g}..{hi:g}, wider than float64 holds: only lossless (max_error=0) can store it"
        )
    q = quality if quality is not None else DEFAULT_QUALITY if mode == "lossy" else PREDICTOR_QUALITY
    d = quality_bound(q, lo, hi, integer) if mode == "lossy" else float(max_error or 0.0)
    # Any bound past the span reconstructs within it; capping keeps the step a small number.
    d = min(d, float(max(1, int(hi - lo)))) if integer else min(d, max(hi - lo, 2.0**-40 * max(abs(lo), abs(hi), 1.0)))
    if integer and mode == "near-lossless" and math.floor(d) == 0:
        # Integers within a bound below 1 are the integers themselves: say so in the stream.
        mode, d = "lossless", 0.0
    if d and not integer and d < (hi - lo) * 2.0**-40:
        raise InvalidInputError(f"max_error={max_error} is too small for this float volume's range; use max_error=0")
    palette = raw and scan.patterns is not None
    mse = (hi - lo) ** 2 * 10.0 ** (-quality_psnr(q) / 10.0) if mode == "lossy" and integer else 0.0
    gain = quality_gain(min(q, PREDICTOR_QUALITY))
    return _Plan(dtype, mode, d, integer, raw, lo, hi, gain, palette, mse)


def _bits(a: np.ndarray) -> np.ndarray:
    """A float array's bit patterns as unsigned integers of its width (NaN payloads and -0.0 kept apart)."""
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def _ordered(bits: np.ndarray, width: int) -> np.ndarray:
    """Keys that sort float bit patterns in the order of their values (NaNs past +inf and below -inf)."""
    bits = bits.astype(np.uint64)
    sign = np.uint64(1) << np.uint64(8 * width - 1)
    mask = (sign << np.uint64(1)) - np.uint64(1) if width < 8 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return np.where(bits & sign, ~bits & mask, bits | sign)


def compress(
    volume: Volume | np.ndarray,
    *,
    quality: int | None = None,
    max_error: float | None = None,
    model: str | None = None,
    tables: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> bytes:
    """Compress a volume to a medcodec stream.

    Args:
        volume: A :class:`Volume` or a numpy array (z, y, x); 2D arrays are one slice.
        quality: Lossy quality, 1 (smallest) to 100 (best); default :data:`DEFAULT_QUALITY`.
            Quality ``q`` guarantees a PSNR of at least ``20 + q / 2`` dB over the volume's
            max - min: integer volumes by every tile's mean squared error, fractional floats
            by bounding every voxel's error (see :func:`quality_bound`).
        max_error: Guaranteed bound on every voxel's absolute error, in the volume's units;
            0 means lossless (bit-exact). For integer volumes its floor is used.
        model: Model name or path to a ``.mcw`` file; default: the shipped model.
        tables: Table prior of the transform coder (lossy integer volumes): a name or path to
            a ``.mct`` file, ``"none"`` to send every frequency table; default: the shipped one.
        progress: Called as ``progress(done_tiles, total_tiles)`` after each tile.

    Returns:
        The stream (format in docs/FORMAT.md).

    Raises:
        InvalidInputError: Both ``quality`` and ``max_error`` given, an option out of range,
            an unsupported dtype or shape, or non-finite values outside lossless mode.
        ModelNotFoundError: ``model`` names no available model.
    """
    _check_options(quality, max_error)
    vol = as_volume(volume)
    arr = vol.array
    scan = _Scan()
    scan.add(arr)
    coding = _Coding.start(vol, arr.shape, arr.dtype, scan, quality, max_error, model, tables)
    chunks = coding.leading_chunks()
    for payload in coding.tiles(lambda t: arr[t], progress):
        chunks.append(Chunk(b"TILE", payload))
    return write_stream(coding.header(), chunks)


@dataclass
class _Coding:
    """One volume being coded, whatever holds its voxels: the plan, the model, the tiles done."""

    vol: Volume  # geometry and metadata (its array is not read here)
    shape: tuple[int, int, int]
    dtype: np.dtype
    quality: int | None
    plan: _Plan
    codec_model: CodecModel | None
    prior: TablePrior | None
    grid: list
    digests: list[bytes]

    @classmethod
    def start(cls, vol: Volume, shape, dtype, scan: _Scan, quality, max_error, model, tables=None) -> _Coding:
        plan = _plan(np.dtype(dtype), scan, quality, max_error)
        # Only float arithmetic runs the network; a model the caller names is checked all the same.
        codec_model = None
        network = not (plan.raw or plan.integer)
        if network or model is not None:
            from .model.files import load_model  # imports torch

            loaded = load_model(model)
            codec_model = loaded if network else None
        # A prior the caller names is checked even where no tile will use it.
        prior = load_prior(tables) if plan.mse or tables is not None else None
        grid = tile_grid(tuple(shape), DEFAULT_TILE)
        return cls(
            vol, tuple(shape), np.dtype(dtype), quality, plan, codec_model, prior if plan.mse else None, grid, []
        )

    def leading_chunks(self) -> list[Chunk]:
        if not self.vol.metadata:
            return []
        meta = json.dumps({str(k): str(v) for k, v in self.vol.metadata.items()}, sort_keys=True).encode()
        if len(meta) > METADATA_LIMIT or len(self.vol.metadata) > METADATA_ENTRIES:
            # The decoder refuses more (docs/FORMAT.md): never write a stream it cannot read.
            raise InvalidInputError(
                f"metadata is {len(self.vol.metadata)} entries, {len(meta)} bytes as JSON; a stream "
                f"holds at most {METADATA_ENTRIES} entries and {METADATA_LIMIT} bytes"
            )
        return [Chunk(b"meta", zstandard.ZstdCompressor(level=19).compress(meta))]

    def tiles(self, voxels: Callable[[tuple[slice, ...]], np.ndarray], progress: Progress | None) -> Iterator[bytes]:
        """Each tile's payload in order; ``voxels(tile)`` gives a tile's voxels."""
        grid, plan, codec_model = self.grid, self.plan, self.codec_model
        budgets: list[tuple[float, int] | None] = [None] * len(grid)
        if plan.mse:
            plan, budgets = _transform_budgets(plan, grid, voxels)
        encoded = _tile_map(
            lambda i: _encode_tile(i, voxels(grid[i]), plan, codec_model, budgets[i], self.prior),
            range(len(grid)),
            parallel=codec_model is None,
        )
        for i, (payload, digest) in enumerate(encoded):
            self.digests.append(digest)
            if progress:
                progress(i + 1, len(grid))
            yield payload

    def header(self) -> Header:
        plan, codec_model, vol, quality = self.plan, self.codec_model, self.vol, self.quality
        named = codec_model or self.prior
        return Header(
            dtype=str(self.dtype),
            mode=plan.mode,
            quality=quality if quality is not None else (DEFAULT_QUALITY if plan.mode == "lossy" else 0),
            shape=self.shape,
            spacing=vol.spacing,
            origin=vol.origin,
            direction=vol.direction,
            max_error=plan.bound,
            lo=plan.lo,
            hi=plan.hi,
            gain_num=plan.gain_num,
            tile=DEFAULT_TILE,
            n_tiles=len(self.grid),
            model_name=named.name if named else "",
            model_sha256=bytes.fromhex(named.sha256) if named else bytes(32),
            voxel_sha256=hashlib.sha256(b"".join(self.digests)).digest(),
            flags=(FLAG_INTEGER_VALUED if plan.integer and self.dtype.kind == "f" else 0)
            | (FLAG_PALETTE if plan.palette else 0)
            | (FLAG_TRANSFORM if plan.mse else 0)
            | (FLAG_REGIONAL if (plan.integer or plan.palette) and not plan.mse else 0),
        )


def _transform_budgets(plan: _Plan, grid: list, voxels) -> tuple[_Plan, list[tuple[float, int] | None]]:
    """One base step for every tile of a lossy integer volume (the largest whose estimated error
    keeps the quality's PSNR over the whole volume), each tile's z levels (0 or 2, by a rate proxy
    at that step), and each tile's share of the squared-error budget: its own estimate, scaled so
    that the shares sum to the budget. A tile that cannot keep its share at that step codes with
    a smaller one, so the volume keeps its PSNR."""
    lo, hi = int(plan.lo), int(plan.hi)

    def candidates(i: int) -> list:
        x = voxels(grid[i])
        flat = analyse_transform(x, lo, hi, 0)
        deep = analyse_transform(x, lo, hi, Z_LEVELS) if x.shape[0] >= 2 * 8 else None
        return [flat] if deep is None or deep.z_levels == 0 else [flat, deep]

    budget = plan.mse * sum(int(np.prod([s.stop - s.start for s in t])) for t in grid)
    analyses = choose_z_levels(list(_tile_map(candidates, range(len(grid)), True)), budget)
    base = choose_base(analyses, budget)
    estimates = [a.sse(base) for a in analyses]
    total = sum(estimates)
    voxels_total = sum(a.voxels for a in analyses)
    if total > 0:
        shares = [e * budget / total for e in estimates]
    else:
        shares = [budget * a.voxels / voxels_total for a in analyses]
    return dataclasses.replace(plan, base=base), [(s, a.z_levels) for s, a in zip(shares, analyses)]


def _encode_tile(
    index: int,
    x: np.ndarray,
    plan: _Plan,
    codec_model: CodecModel | None,
    budget: tuple[float, int] | None = None,
    prior: TablePrior | None = None,
) -> tuple[bytes, bytes]:
    if plan.palette:
        # The tile's distinct values in the order of their values, then each voxel's index into
        # them: neighbouring values get neighbouring indices, so the predictive coder finds them.
        width = x.dtype.itemsize
        bits = _bits(x).ravel()
        table, first, idx = np.unique(_ordered(bits, width), return_index=True, return_inverse=True)
        values = bits[first]
        section, _ = encode_predictive(idx.reshape(x.shape).astype(np.int64), 0, 0, int(table.size) - 1)
        palette = zstandard.ZstdCompressor(level=19).compress(values.astype(f"<u{width}").tobytes())
        digest = _digest(x)
        return pack_tile(index, TilePath.PALETTE, [palette, section], digest), digest
    if plan.raw:
        body = zstandard.ZstdCompressor(level=9).compress(_shuffle(x))
        digest = _digest(x)
        return pack_tile(index, TilePath.RAW, [body], digest), digest
    if plan.integer:
        path, section, recon = TilePath.PREDICTIVE, None, None
        d = int(plan.bound)
        if budget is not None:
            budget, z_levels = budget
            lo, hi = int(plan.lo), int(plan.hi)
            coded = code_transform(x, lo, hi, z_levels, plan.base, budget, prior)
            if coded is not None:
                path, (section, recon) = TilePath.TRANSFORM, coded
            # The predictive coder keeps the tile's share with every voxel within d: d * d * voxels <= share.
            d = min(d, math.isqrt(int(budget // x.size)))
        if section is None or d <= BOTH_CODERS_BOUND:
            # Lossy streams stay format 4.x: their predictive sections keep that layout.
            other, other_recon = encode_predictive(x, d, int(plan.lo), int(plan.hi), regional=not plan.mse)
            if section is None or len(other) < len(section):
                path, section, recon = TilePath.PREDICTIVE, other, other_recon
        digest = _digest(recon.astype(plan.dtype))
        return pack_tile(index, path, [section], digest), digest
    assert codec_model is not None
    y_hat = codec_model.latents(pad_edge(normalize(x, plan.lo, plan.hi), 8), plan.gain_num)
    latents = encode_groups(y_hat, _channel_groups(y_hat.shape), y_hat.shape[0])
    o = codec_model.synthesize(y_hat, plan.gain_num, x.shape)
    pred = to_voxels(o, plan.lo, plan.hi, plan.integer)
    exceptions = b""
    n_buckets = buckets_for(o.size)
    residual, recon = encode_residual(x, pred, o, plan.bound, plan.integer, plan.lo, plan.hi, n_buckets)
    recon = recon.astype(plan.dtype)
    if not plan.integer:
        recon, exceptions = _float_exceptions(x, recon, plan.bound)
    path = TilePath.LEARNED_INT if plan.integer else TilePath.LEARNED_FLOAT
    digest = _digest(recon)
    sections = [latents, residual, exceptions]
    return pack_tile(index, path, sections, digest, levels=LEVELS, n_buckets=n_buckets), digest


def _float_exceptions(x: np.ndarray, recon: np.ndarray, d: float) -> tuple[np.ndarray, bytes]:
    """Voxels that float rounding pushed past the bound, stored verbatim (index, raw bits)."""
    bad = np.flatnonzero(np.abs(recon.astype(np.float64) - x.astype(np.float64)).ravel() > d)
    if bad.size == 0:
        return recon, b""
    recon = recon.copy()
    recon.ravel()[bad] = x.ravel()[bad]
    bits = x.ravel()[bad].astype(x.dtype.newbyteorder("<")).tobytes()
    blob = bad.astype("<i8").tobytes() + bits
    return recon, zstandard.ZstdCompressor(level=19).compress(blob)


def _channel_groups(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.arange(shape[0]).reshape(-1, 1, 1, 1), shape)


def _shuffle(x: np.ndarray) -> bytes:
    b = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).view(np.uint8).reshape(-1, x.dtype.itemsize)
    return b.T.tobytes()


def _unshuffle(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return planes.T.copy().view(dtype.newbyteorder("<")).reshape(shape).astype(dtype)


def _digest(recon: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(recon, dtype=recon.dtype.newbyteorder("<")).tobytes()).digest()


def decompress(
    data: bytes,
    *,
    model: str | None = None,
    tables: str | os.PathLike | None = None,
    progress: Progress | None = None,
    region: Region | None = None,
    model_dirs: Sequence[str | os.PathLike] = (),
) -> Volume:
    """Decode a medcodec stream to a :class:`Volume`.

    Args:
        data: The stream.
        model: Model path or name to use instead of the shipped one the stream names;
            its SHA-256 must equal the stream's.
        tables: Table prior (path or name) to use instead of the one a transform stream
            names; its SHA-256 must equal the stream's.
        progress: Called as ``progress(done_tiles, total_tiles)`` after each tile.
        region: Up to three slices (z, y, x) of unit step: decode only the tiles they
            touch and return that block, its origin moved to its first voxel. Every tile
            decoded is checked against its own checksum, and the stream's tile checksums
            against the header's.
        model_dirs: Folders to search for the model or table prior a stream names, before those of
            ``MEDCODEC_MODEL_PATH`` (the shipped models come first).

    Raises:
        TruncatedStreamError, CorruptStreamError, ChecksumError: The stream is damaged.
        UnsupportedVersionError: The stream needs a newer decoder.
        ModelNotFoundError, ModelMismatchError: The model is missing or differs.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"decompress expects bytes, got {type(data).__name__}")
    header, chunks = read_stream(bytes(data))
    tile_chunks = [c for c in chunks if c.kind == b"TILE"]
    unknown = {c.kind for c in chunks if c.kind[:1].isupper() and c.kind != b"TILE"}
    if unknown:
        names = ", ".join(sorted(k.decode("ascii") for k in unknown))  # read_stream admits only ASCII letters
        raise UnsupportedVersionError(f"stream holds chunks this decoder does not know: {names}")
    # The header's count (checked against its shape and tile size) meets the chunks present
    # before the grid is built: a header may announce billions of tiles in a few bytes.
    if len(tile_chunks) != header.n_tiles:
        raise CorruptStreamError(f"stream holds {len(tile_chunks)} tiles, its header announces {header.n_tiles}")
    tiles = tile_grid(header.shape, header.tile)
    metadata = _metadata(chunks)
    dtype = np.dtype(header.dtype)
    integer = dtype.kind != "f"
    codec_model: CodecModel | None = None
    expected = _expected_path(header, integer)
    codec_model, prior = _stream_models(header, expected, model, tables, model_dirs)

    def decode_one(i: int) -> tuple[np.ndarray, bytes]:
        return _decode_tile(i, tiles[i], tile_chunks[i].payload, header, expected, codec_model, prior)

    box = _region(region, header.shape)
    wanted = [i for i, t in enumerate(tiles) if all(s.start < b.stop and b.start < s.stop for s, b in zip(t, box))]
    if len(wanted) < len(tiles):
        # The tiles left out are never decoded: their stored checksums stand in for them.
        _check_stored_digests([c.payload[-DIGEST_BYTES:] for c in tile_chunks], header)
    shape = tuple(b.stop - b.start for b in box)
    try:
        out = np.empty(shape, dtype=dtype)
    except MemoryError:
        raise MedcodecError(f"the stream's volume ({shape}, {dtype}) does not fit in this machine's memory") from None
    digests = []
    # Predictive tiles decode on two threads where their loops are compiled (and release the
    # GIL); numpy's per-wavefront calls hold it, and a second thread only slows them.
    parallel = expected == TilePath.PREDICTIVE and predictive_compiled()
    for n, (recon, digest) in enumerate(_tile_map(lambda k: decode_one(wanted[k]), range(len(wanted)), parallel)):
        t = tiles[wanted[n]]
        src = tuple(slice(max(s.start, b.start) - s.start, min(s.stop, b.stop) - s.start) for s, b in zip(t, box))
        dst = tuple(slice(max(s.start, b.start) - b.start, min(s.stop, b.stop) - b.start) for s, b in zip(t, box))
        out[dst] = recon[src]
        digests.append(digest)
        if progress:
            progress(n + 1, len(wanted))
    if len(wanted) == len(tiles) and hashlib.sha256(b"".join(digests)).digest() != header.voxel_sha256:
        raise ChecksumError("decoded volume does not match the encoder's checksum")
    origin = header.origin
    if any(b.start for b in box):
        # Physical position = origin + direction @ (spacing * index), index in (x, y, z) order.
        step = np.array(header.spacing) * np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
        origin = tuple(float(v) for v in np.array(header.origin) + np.array(header.direction).reshape(3, 3) @ step)
    return Volume(out, header.spacing, origin, header.direction, metadata)


def _check_stored_digests(stored: list[bytes], header: Header) -> None:
    """The tiles' own checksums (each chunk's last 32 bytes) against the header's voxel checksum.

    Raises:
        ChecksumError: They do not match.
    """
    if hashlib.sha256(b"".join(stored)).digest() != header.voxel_sha256:
        raise ChecksumError("the stream's tile checksums do not match its header's")


#: A region of a volume: slices along (z, y, x); missing trailing axes are whole.
Region = tuple[slice, ...]


def _region(region: Region | None, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """``region`` as three bounded unit-step slices within ``shape``."""
    if region is None:
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    if isinstance(region, slice):
        region = (region,)
    if not isinstance(region, tuple) or len(region) > 3 or not all(isinstance(r, slice) for r in region):
        raise InvalidInputError(f"region must be up to three slices (z, y, x), got {region!r}")
    out = []
    for r, n in zip((*region, *[slice(None)] * (3 - len(region))), shape):
        start, stop, step = r.indices(n)
        if step != 1 or stop <= start:
            raise InvalidInputError(f"region {region!r} is empty or strided within the volume's shape {shape}")
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def _tile_map(fn: Callable[[int], Any], indices: range, parallel: bool) -> Iterator[Any]:
    """``fn`` over tile indices, results in order; with ``parallel``, on two threads.

    Encoding numpy-only tiles gains from a second thread (the fits release the GIL); the
    result does not depend on it.
    """
    if not parallel or len(indices) < 2 or _WORKERS < 2:
        yield from map(fn, indices)
        return
    pool = ThreadPoolExecutor(max_workers=_WORKERS)
    try:
        yield from pool.map(fn, indices)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stream_models(
    header: Header, expected: int, model, tables, dirs: Sequence[str | os.PathLike] = ()
) -> tuple[CodecModel | None, TablePrior | None]:
    """The model a learned stream names, or the table prior a transform stream names (checked
    against the hashes the stream records)."""
    if expected in (TilePath.LEARNED_INT, TilePath.LEARNED_FLOAT):
        from .model.files import model_for_stream

        return model_for_stream(header.model_name, header.model_sha256.hex(), model, dirs), None
    if header.flags & FLAG_TRANSFORM and header.model_name:
        return None, prior_for_stream(header.model_name, header.model_sha256.hex(), tables, dirs)
    return None, None


def _decode_tile(
    i: int,
    tile,
    payload: bytes,
    header: Header,
    expected: int,
    codec_model: CodecModel | None,
    prior: TablePrior | None = None,
) -> tuple[np.ndarray, bytes]:
    """Validate and decode tile chunk ``i``; returns its voxels and checksum.

    Raises:
        TruncatedStreamError, CorruptStreamError, ChecksumError: The chunk is damaged.
    """
    dtype = np.dtype(header.dtype)
    shape = tuple(s.stop - s.start for s in tile)
    head = read_head(payload)
    index, path, levels, n_buckets, reserved = head.index, head.path, head.levels, head.n_buckets, head.reserved
    transform = path == TilePath.TRANSFORM and expected == TilePath.PREDICTIVE and header.flags & FLAG_TRANSFORM
    if index != i or reserved or (path != expected and not transform):
        raise CorruptStreamError(f"tile chunk {i} has a bad index, path or reserved field")
    learned = path in (TilePath.LEARNED_INT, TilePath.LEARNED_FLOAT)
    if learned == (levels == 0 and n_buckets == 0) or levels > 8:
        raise CorruptStreamError(f"tile chunk {i} has invalid residual layer fields")
    sections, digest = read_sections(payload, path)
    try:
        if path == TilePath.RAW:
            recon = _unshuffle(unzstd(sections[0], int(np.prod(shape)) * dtype.itemsize), shape, dtype)
        elif path == TilePath.PALETTE:
            recon = _decode_palette(sections, shape, dtype, bool(header.flags & FLAG_REGIONAL))
        elif path == TilePath.PREDICTIVE:
            lo, hi = int(header.lo), int(header.hi)
            regional = bool(header.flags & FLAG_REGIONAL)
            recon = decode_predictive(sections[0], shape, int(header.max_error), lo, hi, regional).astype(dtype)
        elif path == TilePath.TRANSFORM:
            recon = decode_transform(sections[0], shape, int(header.lo), int(header.hi), prior).astype(dtype)
        else:
            recon = _decode_learned(
                header, codec_model, shape, path == TilePath.LEARNED_INT, levels, n_buckets, sections
            )
            recon = recon.astype(dtype)
    except MedcodecError:
        raise
    except (ValueError, IndexError, RuntimeError, TypeError, OverflowError) as exc:
        raise CorruptStreamError(f"tile {i} cannot be decoded: {exc}") from None
    if _digest(recon) != digest:
        raise ChecksumError(f"tile {i}: decoded voxels do not match the encoder's checksum")
    return recon, digest


def _decode_learned(
    header: Header, codec_model: CodecModel, shape, integer: bool, levels: int, n_buckets: int, sections
) -> np.ndarray:
    latents, residual, exceptions = sections
    c = codec_model.synthesis.latent_channels
    lat_shape = (c, *(-(-s // 8) for s in shape))
    y_hat = decode_groups(latents, _channel_groups(lat_shape), c)
    if y_hat.size and int(np.abs(y_hat).max()) > codec_model.latent_bound(header.gain_num):
        raise CorruptStreamError("latent values outside the model's exact range")
    o = codec_model.synthesize(y_hat, header.gain_num, shape)
    pred = to_voxels(o, header.lo, header.hi, integer)
    if not 1 <= n_buckets <= 64:
        raise CorruptStreamError("tile has an invalid context count")
    recon = decode_residual(residual, pred, o, header.max_error, integer, header.lo, header.hi, n_buckets, levels)
    recon = recon.astype(header.dtype)
    if exceptions:
        if integer:
            raise CorruptStreamError("integer tile carries float exceptions")
        blob = unzstd(exceptions, recon.size * 16)
        itemsize = np.dtype(header.dtype).itemsize
        n = len(blob) // (8 + itemsize)
        if n * (8 + itemsize) != len(blob):
            raise CorruptStreamError("exception list is malformed")
        idx = np.frombuffer(blob[: 8 * n], dtype="<i8")
        if n and (idx[0] < 0 or idx[-1] >= recon.size or (np.diff(idx) <= 0).any()):
            raise CorruptStreamError("exception indices out of range or not increasing")
        recon.ravel()[idx] = np.frombuffer(blob[8 * n :], dtype=np.dtype(header.dtype).newbyteorder("<"))
    return recon


def _expected_path(header: Header, integer_dtype: bool) -> TilePath:
    """The tile path a valid stream uses, given its header (all tiles of a stream share it).

    Raises:
        CorruptStreamError: The header's fields fit no path.
    """
    if integer_dtype or header.flags & FLAG_INTEGER_VALUED:
        # Integer arithmetic: the predictive path names no model (format 1 streams used the
        # learned one); a transform stream names at most a table prior.
        learned = header.model_name != "" and not header.flags & FLAG_TRANSFORM
        if not learned and header.max_error > max(1.0, header.hi - header.lo):
            raise CorruptStreamError("header bound exceeds the intensity span of a predictive stream")
        return TilePath.LEARNED_INT if learned else TilePath.PREDICTIVE
    if header.flags & FLAG_PALETTE:
        return TilePath.PALETTE  # the header's own rules tie it to lossless fractional floats
    if header.mode == "lossless" and header.model_name == "":
        return TilePath.RAW
    if header.model_name == "":
        raise CorruptStreamError("float stream in a lossy mode names no model")
    return TilePath.LEARNED_FLOAT


def _decode_palette(sections: list[bytes], shape: tuple[int, ...], dtype: np.dtype, regional: bool) -> np.ndarray:
    width = dtype.itemsize
    blob = unzstd(sections[0], PALETTE_LIMIT * width)
    if not blob or len(blob) % width:
        raise CorruptStreamError("palette is empty or not whole values")
    values = np.frombuffer(blob, dtype=f"<u{width}")
    keys = _ordered(values, width)
    if values.size > 1 and (keys[1:] <= keys[:-1]).any():
        raise CorruptStreamError("palette values are not distinct and in the order of their values")
    # The indices are clamped to the palette by the predictive coder's own bounds (lo 0, hi n - 1).
    idx = decode_predictive(sections[1], shape, 0, 0, int(values.size) - 1, regional)
    return values.astype(f"u{width}")[idx].view(dtype).reshape(shape)


def _metadata(chunks: list[Chunk]) -> dict:
    """The first ``meta`` chunk's metadata ({} without one)."""
    for c in chunks:
        if c.kind == b"meta":
            return _parse_metadata(c.payload)
    return {}


def _parse_metadata(payload: bytes) -> dict:
    """A ``meta`` payload's metadata, refused unless it is a flat object of strings (Section 6.4)."""
    try:
        text = unzstd(payload, METADATA_LIMIT)
    except CorruptStreamError as exc:
        raise CorruptStreamError(f"metadata chunk is damaged or over {METADATA_LIMIT >> 20} MiB: {exc}") from None
    # Only an object of at most METADATA_ENTRIES strings is parsed: 64 MiB of nested lists
    # would cost gigabytes as Python objects before it could be refused.
    skeleton = b"".join(_JSON_STRING.sub(b'""', text).split())
    if not _JSON_SKELETON.fullmatch(skeleton):
        raise CorruptStreamError("metadata chunk is not an object of strings")
    if skeleton.count(b":") > METADATA_ENTRIES:
        raise CorruptStreamError(f"metadata chunk holds more than {METADATA_ENTRIES} entries")
    try:
        meta = json.loads(text)
    except ValueError:
        raise CorruptStreamError("metadata chunk is not valid JSON") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptStreamError("metadata chunk is not an object of strings")
    return meta


def info(data: bytes) -> StreamInfo:
    """Describe a stream from its header and metadata chunk, without decoding voxels.

    ``metadata_keys`` lists the metadata's keys (sorted), or is None when the stream past
    its header is damaged.

    Raises:
        TruncatedStreamError, CorruptStreamError, UnsupportedVersionError: The header is unusable.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"info expects bytes, got {type(data).__name__}")
    header, _, version = read_header(bytes(data[:65536]) if len(data) > 65536 else bytes(data))
    dtype = np.dtype(header.dtype)
    try:
        # The keys say whether patient data travels with the voxels; a damaged rest of the
        # stream leaves them unknown (None), never reported as absent.
        keys: list[str] | None = sorted(_metadata(read_stream(bytes(data))[1]))
    except MedcodecError:
        keys = None
    return StreamInfo(
        format_version=f"{version[0]}.{version[1]}",
        shape=header.shape,
        dtype=header.dtype,
        spacing=header.spacing,
        origin=header.origin,
        direction=header.direction,
        mode=header.mode,
        max_error=header.max_error,
        quality=header.quality if header.mode == "lossy" else None,
        model_name=header.model_name,
        model_sha256=header.model_sha256.hex(),
        tile_shape=header.tile,
        n_tiles=header.n_tiles,
        compressed_bytes=len(data),
        raw_bytes=int(np.prod(header.shape)) * dtype.itemsize,
        metadata_keys=keys,
    )


#: Aliases in the style of other codec libraries.
encode = compress
decode = decompress
