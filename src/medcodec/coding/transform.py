"""The transform coder: lossy coding of integer tiles within a mean squared error.

A tile, less the middle of the volume's range, goes through the reversible integer wavelet
of :mod:`medcodec.coding.lifting` (in-plane levels always, z levels where the slices are thin
enough to correlate). Each band's coefficients are quantized with a deadzone (the step is the
tile's base step divided by the band's synthesis norm, so every band's error weighs the same
in the voxels) and coded by :mod:`medcodec.coding.coefficients`; the low band is coded by the
predictive coder, losslessly. The decoder dequantizes with integers only (each band's step
and reconstruction offset are sent in fixed point) and inverts the lifting, so every machine
decodes the same voxels.

The encoder picks the largest base step whose reconstruction stays within the mean squared
error it is given (the quality's PSNR floor), checking the exact reconstruction.
docs/FORMAT.md, section 12.11, specifies the section.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

from ..errors import CorruptStreamError, TruncatedStreamError
from . import coefficients as cf
from . import lifting, priors, symbols
from .entropy import unzstd
from .predictive import decode_tile as decode_predictive
from .predictive import encode_tile as encode_predictive

__all__ = [
    "Analysis",
    "analyse",
    "choose_base",
    "choose_z_levels",
    "code_tile",
    "encode_tile",
    "decode_tile",
    "MAX_STEP",
]

#: Step sizes and reconstruction offsets are sent in this many fraction bits.
STEP_BITS = 8
MAX_STEP = 1 << 30
#: The tile enters the wavelet scaled by 2**PRECISION_BITS: the lifting's rounding then stays
#: far below the quantization error even at high qualities.
PRECISION_BITS = 4
#: Largest (|q| + 1) * step (fixed point) of a valid stream: its coefficients stay below 2**44,
#: and the lifting's products within int64.
PRODUCT_LIMIT = 1 << 52
#: Deadzone of the quantizer: |q| = floor(|c| / step + 0.5 - THETA).
THETA = 0.15
#: Low-band values the section may declare, at most (in magnitude).
LOW_LIMIT = 1 << 40
#: Bands of at least this many coefficients get frequency tables of their own.
OWN_TABLES = 1 << 15
_HEAD = struct.Struct("<BIII")
#: The step search estimates each band's error on this many of its coefficients at most, and
#: aims this far below the bound (the estimate leaves the lifting's rounding out).
_SEARCH_SAMPLES, _MARGIN = 1 << 13, 1.0
_WORDS_PER_BAND = 3 + cf.N_FEATURES


def _dequantize(q: np.ndarray, step: int, offset: int) -> np.ndarray:
    """A band's coefficients from its quantized values (integer arithmetic)."""
    m = np.abs(q)
    c = (((m << STEP_BITS) + offset) * step + (1 << (2 * STEP_BITS - 1))) >> (2 * STEP_BITS)
    return np.where(m > 0, np.sign(q) * c, 0)


def _dequantize_low(q: np.ndarray, step: int) -> np.ndarray:
    return (q * step + (1 << (STEP_BITS - 1))) >> STEP_BITS


def _parents(p: lifting.Plan) -> list[int | None]:
    """Index of each band's parent (same orientation, one level coarser), or None."""
    where = {(b.level, b.high): i for i, b in enumerate(p.bands)}
    return [where.get((b.level + 1, b.high)) for b in p.bands]


def _upsampled(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` spread to ``shape`` by repeating each entry over the positions it covers."""
    idx = [np.minimum(np.arange(n) * m // n, m - 1) for n, m in zip(shape, a.shape)]
    return a[np.ix_(*idx)]


def _side(p: lifting.Plan, i: int, parents: list[int | None], q: list[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """Band ``i``'s parent and sibling magnitudes (zeros where it has none)."""
    b = p.bands[i]
    j = parents[i]
    parent = _upsampled(np.abs(q[j]), b.shape) if j is not None else np.zeros(b.shape, np.int64)
    prev = p.bands[i - 1] if i else None
    same = prev is not None and prev.level == b.level and prev.shape == b.shape
    sibling = np.abs(q[i - 1]) if same else np.zeros(b.shape, np.int64)
    return parent, sibling


def _quantize(c: np.ndarray, p: lifting.Plan, steps: np.ndarray, low_step: int):
    """Quantized bands, their reconstruction offsets (fixed point) and the quantized low band."""
    qs, offsets = [], []
    for b, s in zip(p.bands, steps):
        q, off = _band_quantized(c[b.block], int(s))
        qs.append(q)
        offsets.append(off)
    low = c[p.low]
    q_low = np.floor(low * float(1 << STEP_BITS) / low_step + 0.5).astype(np.int64)
    return qs, offsets, q_low


def _in_range(qs, steps, q_low, low_step: int) -> bool:
    """Whether every dequantized coefficient stays within :data:`PRODUCT_LIMIT`."""
    bands = all((int(np.abs(q).max(initial=0)) + 1) * int(s) <= PRODUCT_LIMIT for q, s in zip(qs, steps))
    return bands and (int(np.abs(q_low).max(initial=0)) + 1) * low_step <= PRODUCT_LIMIT


def _reconstruct(p: lifting.Plan, qs, steps, offsets, q_low, low_step: int, mid: int, lo: int, hi: int) -> np.ndarray:
    c = np.zeros(p.shape, np.int64)
    for b, q, s, o in zip(p.bands, qs, steps, offsets):
        c[b.block] = _dequantize(q, int(s), int(o))
    c[p.low] = _dequantize_low(q_low, low_step)
    x = (lifting.inverse(c, p) + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS
    return np.clip(x + mid, lo, hi)


def _steps(base: float, norms: np.ndarray, low_norm: float) -> tuple[np.ndarray, int]:
    scale = float(1 << STEP_BITS)
    steps = np.clip(np.round(base / norms * scale), 1, MAX_STEP).astype(np.int64)
    return steps, int(np.clip(round(base / low_norm * scale), 1, MAX_STEP))


def _band_quantized(v: np.ndarray, step: int) -> tuple[np.ndarray, int]:
    """Deadzone quantization of a band's coefficients, and its reconstruction offset (fixed point):
    the mean position of the nonzero coefficients within their cells."""
    r = np.abs(v) * float(1 << STEP_BITS) / float(step)
    m = np.maximum(np.floor(r + 0.5 - THETA), 0).astype(np.int64)
    nz = m > 0
    off = float(np.mean(r[nz] - m[nz])) if nz.any() else 0.0
    return np.sign(v) * m, int(np.clip(round(off * (1 << STEP_BITS)), 0, (1 << STEP_BITS) - 1))


def _sampled_mse(sample, weight, steps, low, low_step: int, low_norm: float) -> float:
    """The voxel squared error a quantization gives, summed, estimated from each band's sample
    (the wavelet is near orthogonal: a coefficient's error reaches the voxels times its norm)."""
    total = 0.0
    for v, w, s in zip(sample, weight, steps):
        q, off = _band_quantized(v, int(s))
        total += float(((v - _dequantize(q, int(s), off)).astype(np.float64) ** 2).sum()) * w
    e = low - _dequantize_low(np.floor(low * float(1 << STEP_BITS) / low_step + 0.5).astype(np.int64), low_step)
    return total + float((e.astype(np.float64) ** 2).sum()) * low_norm * low_norm


@dataclass
class Analysis:
    """What the step search needs of a tile: a sample of each band's coefficients and the weights
    by which their squared errors reach the voxels (encoder only)."""

    samples: list[np.ndarray]
    weights: list[float]
    low: np.ndarray
    norms: np.ndarray
    low_norm: float
    voxels: int
    z_levels: int
    counts: list[float]  # coefficients each sampled one stands for

    def bits(self, base: float) -> float:
        """A rate proxy at base step ``base``: the sum of log2(1 + |c| / step) over the coefficients
        (estimated from the samples). It ranks decompositions of one tile at one step."""
        steps, _ = _steps(base, self.norms, self.low_norm)
        scale = float(1 << STEP_BITS)
        return sum(
            float(np.log2(1.0 + np.abs(v) * scale / float(s)).sum()) * k
            for v, s, k in zip(self.samples, steps, self.counts)
        )

    def sse(self, base: float) -> float:
        """The tile's estimated sum of squared voxel errors at base step ``base`` (voxel units)."""
        steps, low_step = _steps(base, self.norms, self.low_norm)
        return _sampled_mse(self.samples, self.weights, steps, self.low, low_step, self.low_norm) / _SCALE2


#: Squared scale of the wavelet's input (its coefficients are 2**PRECISION_BITS times the voxels').
_SCALE2 = float(1 << (2 * PRECISION_BITS))


def _coefficients(x: np.ndarray, lo: int, hi: int, z_levels: int) -> tuple[lifting.Plan, np.ndarray]:
    p = lifting.plan(x.shape, z_levels)
    return p, lifting.forward((x.astype(np.int64) - (lo + hi) // 2) << PRECISION_BITS, p)


def _stride(shape: tuple[int, ...]) -> int:
    """A sampling stride giving about :data:`_SEARCH_SAMPLES` coefficients of a band, coprime with
    its row and slice lengths so that the sample visits every column and row."""
    k = max(1, int(np.prod(shape)) // _SEARCH_SAMPLES)
    while k > 1 and (math.gcd(k, shape[2]) != 1 or math.gcd(k, shape[1] * shape[2]) != 1):
        k += 1
    return k


def analyse(x: np.ndarray, lo: int, hi: int, z_levels: int) -> Analysis:
    """A tile's :class:`Analysis`."""
    p, c = _coefficients(x, lo, hi, z_levels)
    norms, low_norm = lifting.band_norms(p)
    samples = [c[b.block].ravel()[:: _stride(b.shape)] for b in p.bands]
    counts = [float(np.prod(b.shape)) / max(1, v.size) for b, v in zip(p.bands, samples)]
    weights = [k * n * n for k, n in zip(counts, norms)]
    return Analysis(samples, weights, c[p.low].copy(), norms, low_norm, x.size, p.z_levels, counts)


def choose_base(analyses: list[Analysis], sse: float) -> float:
    """The largest base step (found to about 1.5 %) whose estimated squared error, summed over the
    tiles, stays within ``sse`` less a margin for the rounding the estimate leaves out. One step
    for every tile of a volume spends the bits where they buy the most error."""
    voxels = sum(a.voxels for a in analyses)
    target = _MARGIN * sse
    base = max(np.sqrt(12.0 * sse / max(voxels, 1) * _SCALE2), 1e-3)
    best = None
    for _ in range(16):
        est = sum(a.sse(base) for a in analyses)
        ratio = np.sqrt(target / est) if est > 0 else 2.0
        if est <= target:
            best = base if best is None else max(best, base)
            if ratio <= 1.01:
                break
        # Aim just below the target: the estimate grows about as the step squared.
        base *= float(np.clip(ratio * 0.998, 0.5, 2.0))
    return best if best is not None else base * 0.9


def code_tile(
    x: np.ndarray, lo: int, hi: int, z_levels: int, base: float, sse: float, prior: priors.TablePrior | None = None
):
    """Code an integer tile at base step ``base`` (smaller where needed) so that its sum of squared
    errors is at most ``sse``; returns the section and the reconstruction (int64), or None where
    the transform cannot hold the bound (the caller codes the tile otherwise). With a ``prior``,
    frequency-table rows may refer to it instead of being sent."""
    x = x.astype(np.int64)
    p, c = _coefficients(x, lo, hi, z_levels)
    norms, low_norm = lifting.band_norms(p)
    for _ in range(12):
        steps, low_step = _steps(base, norms, low_norm)
        qs, offsets, q_low = _quantize(c, p, steps, low_step)
        recon = _reconstruct(p, qs, steps, offsets, q_low, low_step, (lo + hi) // 2, lo, hi)
        err = float(((recon - x).astype(np.float64) ** 2).sum())
        if err <= sse:
            break
        if steps.max(initial=1) == 1 and low_step == 1:
            return None
        base *= 0.97 * min(1.0, np.sqrt(sse / err))
    else:
        return None
    if any(int(np.abs(q).max(initial=0)) >> cf.MAX_MAGNITUDE_BITS for q in qs) or not _in_range(
        qs, steps, q_low, low_step
    ):
        return None
    return _write(p, qs, steps, offsets, q_low, low_step, prior), recon


def choose_z_levels(candidates: list[list[Analysis]], sse: float) -> list[Analysis]:
    """Each tile's decomposition among its ``candidates`` (the same tile with different z levels):
    the one with the smallest rate proxy at the base step the first candidates would take. Where
    slices correlate (thin or overlapping ones) the z levels win; where they are thick, not."""
    base = choose_base([c[0] for c in candidates], sse)
    return [min(c, key=lambda a: (a.bits(base), a.z_levels)) for c in candidates]


def encode_tile(
    x: np.ndarray, mse: float, lo: int, hi: int, z_levels: int, prior: priors.TablePrior | None = None
) -> tuple[bytes, np.ndarray] | None:
    """Code one integer tile on its own with a mean squared error at most ``mse`` (as
    :func:`code_tile`, the step chosen for this tile alone)."""
    base = choose_base([analyse(x, lo, hi, z_levels)], mse * x.size)
    return code_tile(x, lo, hi, z_levels, base, mse * x.size, prior)


def _groups(p: lifting.Plan) -> list[int]:
    """Each band's table group: a large band has its own frequency tables, the small bands of a
    level share theirs (tables would cost them more than they save)."""
    out: list[int] = []
    shared: dict[int, int] = {}
    n = 0
    for b in p.bands:
        if int(np.prod(b.shape)) >= OWN_TABLES:
            out.append(n)
            n += 1
        else:
            if b.level not in shared:
                shared[b.level] = n
                n += 1
            out.append(shared[b.level])
    return out


def _statistics(p: lifting.Plan, qs, steps, offsets):
    """Fit every band's context weights and count its tokens and signs per table group.

    Returns the band parameters, each band's coder state (None for an empty band), and the
    token and sign counts of every group."""
    parents = _parents(p)
    params: list[int] = []
    coders: list[tuple[cf.BandCoder, np.ndarray, np.ndarray, int] | None] = []
    group = _groups(p)
    n_groups = max(group, default=-1) + 1
    tok_counts = np.zeros((n_groups, cf.N_BUCKETS, cf.MAX_TOKENS), np.int64)
    sign_counts = np.zeros((n_groups, cf.N_SIGN_CONTEXTS, 2), np.int64)
    for i, q in enumerate(qs):
        if not q.any():
            params += [int(steps[i]), offsets[i], 1, *[0] * cf.N_FEATURES]
            coders.append(None)
            continue
        bc = cf.BandCoder(q.shape, *_side(p, i, parents, qs))
        bc.load(q)
        bc.weights = cf.fit_weights(bc)
        params += [int(steps[i]), offsets[i], 0, *bc.weights.tolist()]
        mag, sign = np.abs(q).ravel(), np.sign(q).ravel()
        bucket, sctx = _all_contexts(bc)
        bc.tokens = cf.magnitude_tokens(mag)
        tok = bc.tokens[0]
        k = group[i]
        tok_counts[k] += np.bincount(bucket * cf.MAX_TOKENS + tok, minlength=cf.N_BUCKETS * cf.MAX_TOKENS).reshape(
            cf.N_BUCKETS, cf.MAX_TOKENS
        )
        nz = mag > 0
        sign_counts[k] += np.bincount(sctx[nz] * 2 + (sign[nz] < 0), minlength=cf.N_SIGN_CONTEXTS * 2).reshape(-1, 2)
        coders.append((bc, bucket, sctx, k))
    return params, coders, tok_counts, sign_counts


def group_keys(p: lifting.Plan) -> list[str]:
    """Each table group's key in a table prior: ``L<level>`` for a level's shared tables,
    ``L<level>-<zyx>`` (high-pass axes as bits) for a band with tables of its own."""
    keys: dict[int, str] = {}
    for b, g in zip(p.bands, _groups(p)):
        if int(np.prod(b.shape)) >= OWN_TABLES:
            keys[g] = f"L{b.level}-" + "".join("1" if h else "0" for h in b.high)
        else:
            keys.setdefault(g, f"L{b.level}")
    return [keys[g] for g in range(len(keys))]


def _cross_entropy(counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Bits to code each row of ``counts`` with the model of the same row of ``rows``."""
    p = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore"):
        logs = np.where(counts > 0, np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -(counts * logs).sum(axis=1)


def _with_prior(counts: np.ndarray, own: np.ndarray, prior: np.ndarray, bits_per_count: float):
    """Per row, the prior's counts where they cost fewer bits than sending the row's own (an
    encoder choice; the stream says which). Returns the rows both sides model with and the
    values sent: a row of counts, or :data:`priors.PRIOR_ROW` alone for the prior's."""
    gain = _cross_entropy(counts, own) + bits_per_count * np.count_nonzero(own, axis=1)
    gain -= _cross_entropy(counts, prior)
    take = (gain > 0) | (counts.sum(axis=1) == 0)
    rows = np.where(take[:, None], prior, own)
    sent = [np.array([priors.PRIOR_ROW]) if t else r for t, r in zip(take, own)]
    return rows, np.concatenate(sent)


def _write(p: lifting.Plan, qs, steps, offsets, q_low, low_step: int, prior: priors.TablePrior | None) -> bytes:
    low_lo, low_hi = int(q_low.min()), int(q_low.max())
    # The low band is a few thousand values: one z depth spares the comparison of depths.
    low_section, _ = encode_predictive(q_low, 0, low_lo, low_hi, z_levels=0, regional=False)
    band_params, coders, tok_counts, sign_counts = _statistics(p, qs, steps, offsets)
    params = [low_step, low_lo, low_hi, *band_params]
    n_groups = len(tok_counts)
    explicit = []
    for k in range(n_groups):
        used = np.flatnonzero(tok_counts[k].sum(axis=0))
        width = max(2, int(used.max()) + 1) if used.size else 0
        t = symbols.normalized(tok_counts[k][:, :width]) if width else np.zeros((cf.N_BUCKETS, 0), np.int64)
        s = symbols.normalized(sign_counts[k]) if width else np.zeros((cf.N_SIGN_CONTEXTS, 2), np.int64)
        explicit.append((width, t, s))
    zc = zstandard.ZstdCompressor(level=19)
    keys = group_keys(p)
    bits_per_count = 0.0
    if prior is not None:
        # What one nonzero count costs in the compressed tables: the price of sending a row.
        sent = np.concatenate([np.concatenate([[w], t.ravel(), s.ravel()]) for w, t, s in explicit] or [[0]])
        bits_per_count = 8 * len(zc.compress(sent.astype("<u2").tobytes())) / max(1, int(np.count_nonzero(sent)))
    tables, tok_models, sign_models = [], [], []
    for k, (width, t, s) in enumerate(explicit):
        tables.append([width])
        if width and prior is not None and keys[k] in prior.tokens:
            t, sent_t = _with_prior(tok_counts[k][:, :width], t, prior.tokens[keys[k]][:, :width], bits_per_count)
            s, sent_s = _with_prior(sign_counts[k], s, prior.signs[keys[k]], bits_per_count)
            tables += [sent_t, sent_s]
        else:
            tables += [t.ravel(), s.ravel()]
        tok_models.append(symbols.models(t) if width else None)
        sign_models.append(symbols.models(s) if width else None)
    writer = symbols.Writer()
    for i, q in enumerate(qs):
        if coders[i] is None:
            continue
        bc, bucket, sctx, k = coders[i]
        kernels = _kernels()
        if kernels is not None:
            _emit_band_compiled(kernels, bc, q.ravel(), bucket, sctx, tok_models[k], sign_models[k], writer.items)
        else:
            _emit_band(bc, q.ravel(), bucket, sctx, tok_models[k], sign_models[k], writer.items)
    head = zc.compress(np.array(params, np.int64).astype("<i8").tobytes())
    table = zc.compress(np.concatenate(tables).astype("<u2").tobytes())
    words = writer.words().astype("<u4").tobytes()
    return _HEAD.pack(p.z_levels, len(head), len(table), len(low_section)) + head + table + low_section + words


def _all_contexts(bc: cf.BandCoder) -> tuple[np.ndarray, np.ndarray]:
    """Every coefficient's bucket and sign context, the band's coefficients all known (encoder)."""
    k = _kernels()
    if k is None:
        return bc.contexts(np.arange(bc.flat.size))
    n = bc.flat.size
    bucket, sctx, order = (np.empty(n, np.int64) for _ in range(3))
    k.front_contexts(
        np.arange(n),
        bc.flat,
        bc.mag,
        bc.sign,
        bc.off,
        bc.external,
        bc.weights,
        cf.THRESHOLDS,
        cf.C_SCALE,
        cf.FEATURE_LIMIT,
        bucket,
        sctx,
        order,
        np.zeros(cf.N_BUCKETS, np.int64),
    )
    return bucket, sctx


def _emit_band_compiled(k, bc: cf.BandCoder, q: np.ndarray, bucket, sctx, tok_models, sign_models, items) -> None:
    """As :func:`_emit_band`, the symbols ordered by a compiled kernel."""
    tok, nraw, raw = bc.tokens
    neg = (q < 0).astype(np.int64)
    tok_sym, rk, rl, fr, lo_v, lo_b, flo, hi_v, hi_b, fhi, sgn, sk, sl, fsr = k.band_runs(
        bc.order, bc.bounds, bucket, sctx, tok, nraw, raw, neg, cf.N_BUCKETS, cf.N_SIGN_CONTEXTS
    )
    ends, sends = np.cumsum(rl).tolist(), np.cumsum(sl).tolist()
    rk, sk, fr, fsr, flo, fhi = rk.tolist(), sk.tolist(), fr.tolist(), fsr.tolist(), flo.tolist(), fhi.tolist()
    r = sr = lo_at = hi_at = 0
    at = s_at = 0
    for f in range(bc.n_fronts):
        for _ in range(fr[f]):
            items.append((tok_sym[at : ends[r]], tok_models[rk[r]], None))
            at = ends[r]
            r += 1
        if flo[f] > lo_at:
            items.append((lo_v[lo_at : flo[f]], symbols.UNIFORM, lo_b[lo_at : flo[f]]))
            lo_at = flo[f]
        if fhi[f] > hi_at:
            items.append((hi_v[hi_at : fhi[f]], symbols.UNIFORM, hi_b[hi_at : fhi[f]]))
            hi_at = fhi[f]
        for _ in range(fsr[f]):
            items.append((sgn[s_at : sends[sr]], sign_models[sk[sr]], None))
            s_at = sends[sr]
            sr += 1


def _by_key(keys: np.ndarray, n_keys: int):
    """(key, positions) for each key present, in increasing key order, positions in their order:
    how a front's symbols are grouped for their models (tokens by bucket, signs by context)."""
    order = np.argsort(keys, kind="stable")
    sizes = np.bincount(keys, minlength=n_keys)
    start = 0
    for k in np.flatnonzero(sizes).tolist():
        n = int(sizes[k])
        yield k, order[start : start + n]
        start += n


def _emit_band(bc: cf.BandCoder, q: np.ndarray, bucket, sctx, tok_models: list, sign_models: list, items: list) -> None:
    """Append a band's symbols in the decoder's order: per front, tokens by bucket, raw bits, signs by context."""
    mag = np.abs(q)
    tok, nraw, raw = bc.tokens
    neg = (q < 0).astype(np.int64)
    for f in range(bc.n_fronts):
        idx = bc.front(f)
        for k, at in _by_key(bucket[idx], cf.N_BUCKETS):
            items.append((tok[idx[at]], tok_models[k], None))
        for vals, bits in symbols.raw_parts(nraw[idx], raw[idx]):
            if vals.size:
                items.append((vals, symbols.UNIFORM, bits))
        nz = idx[mag[idx] > 0]
        for k, at in _by_key(sctx[nz], cf.N_SIGN_CONTEXTS):
            items.append((neg[nz[at]], sign_models[k], None))


class _Words:
    def __init__(self, w: np.ndarray) -> None:
        self.w, self.pos = w, 0

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.pos + n > self.w.size:
            raise CorruptStreamError("transform parameters are short")
        out = self.w[self.pos : self.pos + n]
        self.pos += n
        return out


def _model(models: list | None, k: int):
    m = models[k] if models is not None else None
    if m is None:
        raise CorruptStreamError("transform symbols fall in a context with no frequencies")
    return m


def _kernels():
    """The compiled front kernels, or None where numba is missing or MEDCODEC_NO_JIT is set."""
    global _KERNELS
    if _KERNELS is None:
        from . import bandfront

        _KERNELS = bandfront if bandfront.AVAILABLE and not os.environ.get("MEDCODEC_NO_JIT") else False
    return _KERNELS or None


_KERNELS = None


def _decode_band_compiled(k, bc: cf.BandCoder, coder, tok_models: list | None, sign_models: list | None) -> None:
    """Decode a band into ``bc`` with the compiled kernels, a front at a time (as :func:`_decode_band`)."""
    n_max = int(np.diff(bc.bounds).max(initial=0))
    bucket, sctx, order, tok, mags, sign_order = (np.empty(n_max, np.int64) for _ in range(6))
    sym = np.empty(n_max, np.int32)
    lo_sizes, hi_sizes = np.empty(n_max, np.int32), np.empty(n_max, np.int32)
    sizes = np.zeros(cf.N_BUCKETS, np.int64)
    sign_sizes = np.zeros(cf.N_SIGN_CONTEXTS, np.int64)
    empty = np.zeros(0, np.int32)
    ext, w, thr = bc.external, bc.weights, cf.THRESHOLDS
    for f in range(bc.n_fronts):
        idx = bc.front(f)
        n = idx.size
        k.front_contexts(
            idx, bc.flat, bc.mag, bc.sign, bc.off, ext, w, thr, cf.C_SCALE, cf.FEATURE_LIMIT, bucket, sctx, order, sizes
        )
        start = 0
        for b in np.flatnonzero(sizes).tolist():
            size = int(sizes[b])
            sym[start : start + size] = coder.decode(_model(tok_models, b), size)
            start += size
        if n and int(sym[:n].max()) >= cf.MAX_TOKENS:
            raise CorruptStreamError("transform token out of range")
        n_lo, n_hi = k.front_raw_sizes(sym, order, n, tok, lo_sizes, hi_sizes, cf.DIRECT_BITS, cf.MANTISSA_BITS)
        lo_vals = coder.decode(symbols.UNIFORM, lo_sizes[:n_lo]) if n_lo else empty
        hi_vals = coder.decode(symbols.UNIFORM, hi_sizes[:n_hi]) if n_hi else empty
        nz = k.front_magnitudes(
            n, tok, lo_vals, hi_vals, sctx, cf.DIRECT_BITS, cf.MANTISSA_BITS, mags, sign_order, sign_sizes
        )
        neg = np.empty(nz, np.int32)
        start = 0
        for c in np.flatnonzero(sign_sizes).tolist():
            size = int(sign_sizes[c])
            neg[start : start + size] = coder.decode(_model(sign_models, c), size)
            start += size
        k.front_store(idx, bc.flat, n, mags, neg, sign_order, nz, bc.mag, bc.sign)


def _decode_band(bc: cf.BandCoder, coder, tok_models: list | None, sign_models: list | None) -> None:
    """Decode a band into ``bc`` with the numpy reference, a front at a time."""
    for f in range(bc.n_fronts):
        idx = bc.front(f)
        bucket, sctx = bc.contexts(idx)
        tok = np.empty(idx.size, np.int64)
        for k, at in _by_key(bucket, cf.N_BUCKETS):
            tok[at] = coder.decode(_model(tok_models, k), at.size)
        if tok.size and tok.max() >= cf.MAX_TOKENS:
            raise CorruptStreamError("transform token out of range")
        nraw = cf.token_raw_bits(tok)
        raw = np.zeros_like(tok)
        m = nraw > 0
        if m.any():
            nr = nraw[m]
            vals = coder.decode(symbols.UNIFORM, (1 << np.minimum(nr, 16)).astype(np.int32)).astype(np.int64)
            mh = nr > 16
            if mh.any():
                vals[mh] |= coder.decode(symbols.UNIFORM, (1 << (nr[mh] - 16)).astype(np.int32)).astype(np.int64) << 16
            raw[m] = vals
        mag = cf.magnitudes(tok, raw)
        sign = (mag > 0).astype(np.int64)
        nz = np.flatnonzero(mag)
        for k, at in _by_key(sctx[nz], cf.N_SIGN_CONTEXTS):
            sign[nz[at]] = 1 - 2 * np.asarray(coder.decode(_model(sign_models, k), at.size), np.int64)
        bc.store(idx, mag, sign)


def _read_tables(
    rt: _Words, keys: list[str], prior: priors.TablePrior | None
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Every group's token width, token rows and sign rows, prior rows filled in."""
    out = []
    for key in keys:
        width = int(rt.take(1)[0])
        if width and not 2 <= width <= cf.MAX_TOKENS:
            raise CorruptStreamError("transform token table has an invalid width")
        if not width:
            t = np.zeros((cf.N_BUCKETS, 0), np.int64)
            s = rt.take(2 * cf.N_SIGN_CONTEXTS).reshape(cf.N_SIGN_CONTEXTS, 2)
        else:
            t = _read_rows(rt, cf.N_BUCKETS, width, prior.tokens.get(key) if prior else None)
            s = _read_rows(rt, cf.N_SIGN_CONTEXTS, 2, prior.signs.get(key) if prior else None)
        if (t > symbols.COUNT_TOTAL).any() or (s > symbols.COUNT_TOTAL).any():
            raise CorruptStreamError("transform frequency tables are invalid")
        out.append((width, t, s))
    return out


def _read_rows(rt: _Words, n: int, width: int, prior_rows: np.ndarray | None) -> np.ndarray:
    rows = np.empty((n, width), np.int64)
    for b in range(n):
        first = rt.take(1)
        if first.size and first[0] == priors.PRIOR_ROW:
            if prior_rows is None:
                raise CorruptStreamError("transform tables refer to a table prior the stream does not name")
            rows[b] = prior_rows[b, :width]
        else:
            rows[b] = np.concatenate([first, rt.take(width - 1)])
    return rows


def _table_words(data: bytes, shape: tuple[int, int, int]) -> tuple[lifting.Plan, _Words, int, int, int]:
    if len(data) < _HEAD.size:
        raise TruncatedStreamError("transform section ends inside its header")
    z_levels, n_head, n_table, n_low = _HEAD.unpack_from(data)
    if z_levels > lifting.MAX_LEVELS or _HEAD.size + n_head + n_table + n_low > len(data):
        raise CorruptStreamError("transform section header is invalid")
    p = lifting.plan(shape, z_levels)
    if p.z_levels != z_levels:
        raise CorruptStreamError("transform section declares more z levels than the tile allows")
    n_groups = len(group_keys(p))
    at = _HEAD.size + n_head
    max_table = n_groups * (1 + cf.N_BUCKETS * cf.MAX_TOKENS + 2 * cf.N_SIGN_CONTEXTS)
    rt = _Words(np.frombuffer(unzstd(data[at : at + n_table], 2 * max_table), dtype="<u2").astype(np.int64))
    return p, rt, n_head, n_table, n_low


def section_tables(data: bytes, shape: tuple[int, int, int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The frequency tables a transform section sends, per group: its prior key, token rows
    (buckets x width) and sign rows (what a table prior trains on; the coded data is not read).

    Raises:
        CorruptStreamError: The section is damaged, or refers to a table prior.
    """
    p, rt, _, _, _ = _table_words(data, shape)
    keys = group_keys(p)
    return [(k, t, s) for k, (_, t, s) in zip(keys, _read_tables(rt, keys, None))]


def decode_tile(
    data: bytes, shape: tuple[int, int, int], lo: int, hi: int, prior: priors.TablePrior | None = None
) -> np.ndarray:
    """Invert :func:`encode_tile`; returns the reconstruction (int64). ``prior`` is the table
    prior the stream names, if any."""
    p, rt, n_head, n_table, n_low = _table_words(data, shape)
    group = _groups(p)
    at = _HEAD.size
    n_words = 3 + _WORDS_PER_BAND * len(p.bands)
    r = _Words(np.frombuffer(unzstd(data[at : at + n_head], 8 * n_words), dtype="<i8").astype(np.int64))
    at += n_head + n_table
    low_step, low_lo, low_hi = (int(v) for v in r.take(3))
    if not 1 <= low_step <= MAX_STEP or not -LOW_LIMIT <= low_lo <= low_hi <= LOW_LIMIT:
        raise CorruptStreamError("transform low band parameters are out of range")
    q_low = decode_predictive(data[at : at + n_low], tuple(s.stop for s in p.low), 0, low_lo, low_hi, False)
    at += n_low
    tok_models, sign_models = [], []
    for width, t, s in _read_tables(rt, group_keys(p), prior):
        tok_models.append(symbols.models(t) if width else None)
        sign_models.append(symbols.models(s) if width else None)
    body = data[at:]
    if len(body) % 4:
        raise CorruptStreamError("transform section's coded words are not whole")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
    parents = _parents(p)
    k = _kernels()
    qs: list[np.ndarray | None] = []
    steps, offsets = [], []
    for i, b in enumerate(p.bands):
        step, offset, empty = (int(v) for v in r.take(3))
        w = r.take(cf.N_FEATURES).copy()
        if not 1 <= step <= MAX_STEP or not 0 <= offset < 1 << STEP_BITS or empty not in (0, 1):
            raise CorruptStreamError("transform band parameters are out of range")
        cf.check_weights(w)
        steps.append(step)
        offsets.append(offset)
        if empty:
            qs.append(np.zeros(b.shape, np.int64))
            continue
        parent, sibling = _side(p, i, parents, qs)
        bc = cf.BandCoder(b.shape, parent, sibling, w)
        if k is not None:
            _decode_band_compiled(k, bc, coder, tok_models[group[i]], sign_models[group[i]])
        else:
            _decode_band(bc, coder, tok_models[group[i]], sign_models[group[i]])
        qs.append(bc.values())
    if r.pos != r.w.size or rt.pos != rt.w.size or not coder.is_empty():
        raise CorruptStreamError("transform section has unused parameters or coded data")
    if not _in_range(qs, steps, q_low, low_step):
        raise CorruptStreamError("transform coefficients exceed the format's range")
    mid = (lo + hi) // 2
    return _reconstruct(p, qs, np.array(steps), offsets, q_low, low_step, mid, lo, hi)
