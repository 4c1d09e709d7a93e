"""Prototype for the lossy transform coder: 3D CDF 9/7 lifting, deadzone quantization and a
context-conditioned entropy estimate, against slice-wise JPEG 2000 on train-split crops.

    PYTHONPATH=src:. python -m benchmarks.transform_prototype [--crops A,B] [--z-levels 0,2]
        [--theta 0.3] [--contexts fit|plain]

Not a codec: the rate is an estimate (the empirical entropy of each band's magnitude tokens
in each of its contexts, 12 bits per table entry, raw bits and signs as in
``medcodec.coding.predictive``'s tokens, signs in 9 contexts of their W and N neighbours' signs);
the distortion is exact (inverse transform of the dequantized coefficients, rounded and
clipped). Bands: 5 in-plane levels, the first ``z`` of them also split along z. Contexts:
``plain`` buckets 2W + 2N + NW + NE (+ 2·parent) on a log scale; ``fit`` buckets a
least-squares fit per band of 4|q| on the |q| of W, N, NW, NE, WW, NN, NNE, the previous
slice, the parent and the previous band of the level. Prints each crop's BD-rate against
JPEG 2000 (PSNR over the crop's range, 35-65 dB) per z depth. Results: benchmarks/ATTEMPTS.md.
"""

import argparse
import math

import imagecodecs
import numpy as np

from benchmarks.bdrate import bd_rate
from benchmarks.crops import CROPS
from medcodec.files.images import read
from medcodec.training.datasets import find_data_dir

A, B, C, D, K = -1.586134342059924, -0.052980118572961, 0.882911075530934, 0.443506852043971, 1.230174104914001


def _ext_next(e, n_odd):
    # e[i+1] for i in range(n_odd), mirrored at the end
    nxt = np.concatenate([e[1:], e[-1:]], 0) if e.shape[0] > 1 else e
    return nxt[:n_odd]


def fwd1(x, axis):
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    if n < 2:
        return np.moveaxis(x.copy(), 0, axis), np.moveaxis(x[:0].copy(), 0, axis)
    e, o = x[0::2].copy(), x[1::2].copy()
    no, ne = o.shape[0], e.shape[0]

    def prev_o(o):  # o[i-1] for i in range(ne), mirrored: o[-1] -> o[0]; o[ne-1] when ne > no -> o[no-1]
        p = np.concatenate([o[:1], o], 0)[:ne]
        return p

    def cur_o(o):  # o[i] for i in range(ne), mirrored past the end -> o[no-1]
        return np.concatenate([o, o[-1:]], 0)[:ne]

    o += A * (e[:no] + _ext_next(e, no))
    e += B * (prev_o(o) + cur_o(o))
    o += C * (e[:no] + _ext_next(e, no))
    e += D * (prev_o(o) + cur_o(o))
    return np.moveaxis(e * (1 / K), 0, axis), np.moveaxis(o * (K / 2) * 2 / 2, 0, axis)


def inv1(lo, hi, axis):
    e, o = np.moveaxis(lo, axis, 0) * K, np.moveaxis(hi, axis, 0) / (K / 2 * 2 / 2)
    ne, no = e.shape[0], o.shape[0]
    if no == 0:
        return np.moveaxis(e, 0, axis)

    def prev_o(o):
        return np.concatenate([o[:1], o], 0)[:ne]

    def cur_o(o):
        return np.concatenate([o, o[-1:]], 0)[:ne]

    e = e - D * (prev_o(o) + cur_o(o))
    o = o - C * (e[:no] + _ext_next(e, no))
    e = e - B * (prev_o(o) + cur_o(o))
    o = o - A * (e[:no] + _ext_next(e, no))
    x = np.empty((ne + no,) + e.shape[1:])
    x[0::2], x[1::2] = e, o
    return np.moveaxis(x, 0, axis)


def fwd(x, levels_xy, levels_z):
    """Dyadic decomposition: each level splits the current LL(L) block along the axes it uses."""
    bands = []  # (level, name, array)
    ll = x
    for lev in range(max(levels_xy, levels_z)):
        axes = ([0] if lev < levels_z else []) + ([1, 2] if lev < levels_xy else [])
        parts = {"": ll}
        for ax in axes:
            new = {}
            for k, v in parts.items():
                l, h = fwd1(v, ax)
                new[k + "L"], new[k + "H"] = l, h
            parts = new
        key_ll = "L" * len(axes)
        ll = parts.pop(key_ll)
        for k, v in parts.items():
            bands.append((lev, tuple(axes), k, v))
    return ll, bands


def inv(ll, bands, levels_xy, levels_z):
    by_level = {}
    for lev, axes, k, v in bands:
        by_level.setdefault(lev, (axes, {}))[1][k] = v
    for lev in reversed(range(max(levels_xy, levels_z))):
        axes, parts = by_level[lev]
        parts = dict(parts)
        parts["L" * len(axes)] = ll
        for i in reversed(range(len(axes))):
            new = {}
            for k in {k[:i] for k in parts}:
                new[k] = inv1(parts[k + "L"], parts[k + "H"], axes[i])
            parts = new
        ll = parts[""]
    return ll


def band_norms(shape, levels_xy, levels_z):
    """L2 norm of the synthesis basis function of each band (impulse in the band's middle)."""
    ll, bands = fwd(np.zeros(shape), levels_xy, levels_z)
    norms = []
    for i in range(len(bands) + 1):
        ll2 = np.zeros_like(ll)
        b2 = [(l, a, k, np.zeros_like(v)) for l, a, k, v in bands]
        arr = ll2 if i == len(bands) else b2[i][3]
        if arr.size == 0:
            norms.append(1.0)
            continue
        arr[tuple(s // 2 for s in arr.shape)] = 1.0
        norms.append(float(np.sqrt((inv(ll2, b2, levels_xy, levels_z) ** 2).sum())))
    return norms[:-1], norms[-1]


MODE = {"ctx": "fit", "sign": True, "sib": True, "po": 2}


def entropy_bits(q, parent=None, nbuckets=16, sibling=None, per_octave=2):
    """Bits to code q with contexts from causal neighbours and the parent."""
    a = np.abs(q).astype(np.int64)
    pad = np.pad(a, ((1, 0), (2, 0), (2, 2)))
    W, N, NW, NE = pad[1:, 2:, 1:-3], pad[1:, 1:-1, 2:-2], pad[1:, 1:-1, 1:-3], pad[1:, 1:-1, 3:-1]
    WW, NN, Z = pad[1:, 2:, :-4], pad[1:, :-2, 2:-2], pad[:-1, 2:, 2:-2]
    if MODE["ctx"] == "fit":
        P = parent if parent is not None else np.zeros_like(a)
        S = np.abs(sibling).astype(np.int64) if sibling is not None else np.zeros_like(a)
        NNE = pad[1:, :-2, 3:-1]
        F = np.stack([W, N, NW, NE, WW, NN, Z, P, S, NNE], -1).reshape(-1, 10).astype(np.float64)
        sub = slice(None, None, max(1, F.shape[0] // 20000))
        w, *_ = np.linalg.lstsq(F[sub], 4.0 * a.ravel()[sub], rcond=None)
        w = np.maximum(w, 0)
        c = (F @ w).reshape(a.shape)
        bucket = np.minimum(np.floor(np.log2(1 + c) * per_octave).astype(np.int64), 12 * per_octave)
    elif MODE["ctx"] in ("interband", "interband_noz"):
        # Only what a band-at-once decoder knows: the parent, the level's earlier bands and
        # (slice by slice) the previous slice, each with its 3x3 in-plane neighbourhood.
        def box(v):
            v = np.pad(v, ((0, 0), (1, 1), (1, 1)))
            return sum(v[:, i : i + a.shape[1], j : j + a.shape[2]] for i in range(3) for j in range(3))

        zero = np.zeros_like(a)
        P = parent if parent is not None else zero
        S = np.abs(sibling).astype(np.int64) if sibling is not None else zero
        Zp = np.concatenate([zero[:1], a[:-1]], 0) if MODE["ctx"] == "interband" else zero
        F = np.stack([P, box(P), S, box(S), Zp, box(Zp)], -1).reshape(-1, 6).astype(np.float64)
        sub = slice(None, None, max(1, F.shape[0] // 20000))
        w, *_ = np.linalg.lstsq(F[sub], 4.0 * a.ravel()[sub], rcond=None)
        c = (F @ np.maximum(w, 0)).reshape(a.shape)
        bucket = np.minimum(np.floor(np.log2(1 + c) * per_octave).astype(np.int64), 12 * per_octave)
    elif MODE["ctx"] == "rich":
        c = 4 * W + 4 * N + 2 * NW + 2 * NE + WW + NN + 2 * Z
        if parent is not None:
            c = c + 4 * parent
        bucket = np.minimum(np.floor(np.log2(1 + c) * 2).astype(np.int64), nbuckets * 2 - 1)
    else:
        c = 2 * W + 2 * N + NW + NE
        if parent is not None:
            c = c + 2 * parent
        bucket = np.minimum(np.floor(np.log2(1 + c) * 1.5).astype(np.int64), nbuckets - 1)
    u = a
    e = np.floor(np.log2(np.maximum(u, 1))).astype(np.int64)
    big = u >= 16
    nraw = np.where(big, e - 2, 0)
    tok = np.where(big, 16 + ((e - 4) << 2) + ((u >> np.maximum(nraw, 0)) & 3), u)
    bits = float(nraw.sum())
    tables = 0
    for k in range(int(bucket.max()) + 1):
        t = tok[bucket == k]
        if t.size == 0:
            continue
        cnt = np.bincount(t)
        cnt = cnt[cnt > 0]
        bits -= float((cnt * np.log2(cnt / cnt.sum())).sum())
        tables += 12 * len(cnt)
    nz = a > 0
    if MODE["sign"]:
        sg = np.sign(q).astype(np.int64)
        sp = np.pad(sg, ((0, 0), (1, 0), (1, 0)))
        sctx = (sp[:, 1:, :-1] + 1) * 3 + (sp[:, :-1, 1:] + 1)
        for k in range(9):
            m = nz & (sctx == k)
            n = int(m.sum())
            if n:
                p = float((sg[m] > 0).sum()) / n
                if 0 < p < 1:
                    bits += n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    else:
        bits += float(nz.sum())
    return bits + tables


def parent_of(q_child_shape, parent_q):
    if parent_q is None:
        return None
    p = np.abs(parent_q)
    idx = [
        np.minimum(np.arange(s) // 2 if ps * 2 >= s or True else np.arange(s), ps - 1)
        for s, ps in zip(q_child_shape, p.shape)
    ]
    return p[np.ix_(*idx)]


def code(x, delta, levels_xy, levels_z, norms, theta=0.2, rec=0.0):
    ll, bands = fwd(x - x.mean(), levels_xy, levels_z)
    bnorms, llnorm = norms
    total = 0.0
    qbands = []
    for (*_, v), nb in zip(bands, bnorms):
        step = delta / nb
        q = np.sign(v) * np.floor(np.abs(v) / step + 0.5 - theta)
        qbands.append(q)
    qll = np.round(ll / (delta / llnorm))
    # parent: same name band at level+1 (if it exists with same axes), else none
    index = {(lev, k): i for i, (lev, _axes, k, _v) in enumerate(bands)}
    if MODE["ctx"] == "coder":
        from medcodec.coding.predictive import encode_tile

        for q in [*qbands, qll]:
            q = q.astype(np.int64)
            total += 8 * len(encode_tile(q, 0, int(q.min()), int(q.max()))[0])
        qbands_iter = []
    else:
        qbands_iter = list(enumerate(zip(bands, qbands)))
    for i, ((lev, axes, k, _v), q) in qbands_iter:
        j = index.get((lev + 1, k))
        par = parent_of(q.shape, qbands[j]) if j is not None and len(bands[j][1]) == len(axes) else None
        sib = (
            qbands[i - 1]
            if MODE.get("sib") and i > 0 and bands[i - 1][0] == lev and qbands[i - 1].shape == q.shape
            else None
        )
        total += entropy_bits(q, par, sibling=sib, per_octave=MODE.get("po", 2))
    if MODE["ctx"] != "coder":
        total += entropy_bits(qll)
    # reconstruction
    rb = []
    for (lev, axes, k, _v), nb, q in zip(bands, bnorms, qbands):
        step = delta / nb
        rb.append((lev, axes, k, np.sign(q) * (np.abs(q) + 0.5 - theta + rec) * step * (q != 0)))
    y = inv(qll * (delta / llnorm), rb, levels_xy, levels_z) + x.mean()
    return total, y


def psnr(x, y, rng):
    mse = np.mean((x.astype(np.float64) - y) ** 2)
    return 10 * math.log10(rng * rng / mse) if mse > 0 else 99.0


def j2k_curve(a, targets):
    lo, hi = int(a.min()), int(a.max())
    dt = np.uint8 if hi - lo <= 255 else np.uint16
    peak = float(np.iinfo(dt).max)
    rates, ps = [], []
    for t in targets:
        level = t + 20 * math.log10(peak / (hi - lo))
        nbytes, out = 0, np.empty(a.shape)
        for z in range(a.shape[0]):
            enc = imagecodecs.jpeg2k_encode((a[z].astype(np.int64) - lo).astype(dt), level=level)
            nbytes += len(enc)
            out[z] = imagecodecs.jpeg2k_decode(enc).astype(np.float64) + lo
        rates.append(8 * nbytes / a.size)
        ps.append(psnr(a, out, hi - lo))
    return rates, ps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--crops", default=",".join(CROPS), help="comma-separated names from benchmarks.crops")
    p.add_argument("--z-levels", default="0,2", help="z depths to try (each crop gets its best)")
    p.add_argument("--theta", type=float, default=0.3, help="deadzone: q = floor(|c|/step + 0.5 - theta)")
    p.add_argument("--contexts", choices=("fit", "plain", "interband", "interband_noz", "coder"), default="fit")
    p.add_argument("--no-sign-contexts", action="store_true", help="signs cost 1 bit each")
    args = p.parse_args(argv)
    MODE["ctx"], MODE["sign"] = args.contexts, not args.no_sign_contexts
    data = find_data_dir()
    best_all = []
    for name in args.crops.split(","):
        a = np.ascontiguousarray(read(data / f"{name}.nii.gz").array[CROPS[name]]).astype(np.int64)
        rng = float(a.max() - a.min())
        jr, jp = j2k_curve(a, [35, 40, 45, 50, 55, 60, 65])
        best = None
        for lz in (int(z) for z in args.z_levels.split(",")):
            lz = max(0, min(lz, int(math.log2(max(1, a.shape[0]))) - 1))
            norms = band_norms(a.shape, 5, lz)
            rates, ps = [], []
            for delta in rng * np.array([0.1, 0.05, 0.025, 0.0125, 0.006, 0.003, 0.0015, 0.0008, 0.0004]):
                bits, y = code(a.astype(np.float64), delta, 5, lz, norms, args.theta, 0.0)
                rates.append(bits / a.size)
                ps.append(psnr(a, np.clip(np.round(y), a.min(), a.max()), rng))
            bd = bd_rate(jr, jp, rates, ps, (35, 65))
            best = bd if best is None or (bd is not None and bd < best) else best
            print(f"{name} {a.shape} z-levels {lz}: BD-rate vs JPEG 2000 {bd:+.1f} %", flush=True)
        best_all.append(best)
    print(f"mean of each crop's best: {np.mean(best_all):+.1f} %")


if __name__ == "__main__":
    main()
