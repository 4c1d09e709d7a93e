"""Closed loop: a trained cross-band predictor inside the transform coder, real section bytes.

    PYTHONPATH=src:. python -m benchmarks.crossband_loop [--iterations 3000] [--crops ct_s3,mr_mprage]

The transform coder's own decomposition (``medcodec.coding.lifting``, in-plane levels only:
z_levels=0, which the coder's rate proxy picks for these thick-slice or anisotropic crops)
is coded at a base step twice: as the codec does, and with a predictor in the loop. In the
decoder's order (coarsest level first) the level's LL is rebuilt from the dequantized coarser
data (what a decoder has), a network predicts the level's three high bands from the 7×7 LL
around each position, and the coefficients less the prediction rounded to integers are
quantized with the baseline's steps (each band's centroid offset refitted to the residual);
the band's reconstruction is the prediction plus the dequantized residual. Both variants' bytes
are the real section's: the script calls the coder's internals (``_coefficients``, ``_steps``,
``_band_quantized``, ``_dequantize``, ``_write``) with the residual bands substituted, which a
benchmark may do and the codec would not. Inference is in float32 here; the codec would need
integer-exact inference so that every decoder rebuilds the same bands.

The predictors (crossband_prototype's network, 49 → 32 → 32 → 3, L1 loss, translation
invariant) are trained on crossband_prototype's TRAIN slices, open loop (original LL): one per
level, or one shared by all levels, LL and bands scaled per level by their synthesis norms over
2**(level + 1) so that the levels' values are alike, and each net's inputs and outputs by their
mean magnitudes in training. Evaluated on 32×256×256 crops (fewer slices where
the volume has fewer) of crossband_prototype's HELD_OUT volumes at five base steps (about
36–61 dB), predicting level 1 only, levels 2 and up, or all levels. Prints per crop the bytes
ratio and PSNR difference per step and the BD-rate (``benchmarks.bdrate``) of each variant
against the codec, and the predictor's multiply-adds per voxel and float run time.
Results: benchmarks/ATTEMPTS.md, "Learned parts of the transform" (L4).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks.bdrate import bd_rate
from benchmarks.crossband_prototype import HELD_OUT, TRAIN, _features
from medcodec.coding import lifting
from medcodec.coding import transform as tc
from medcodec.files.images import read
from medcodec.training.datasets import find_data_dir

RADIUS = 3
HIDDEN = (32, 32)
TAPS = (2 * RADIUS + 1) ** 2
#: HELD_OUT's volumes as 32-slice crops (the 6.5 mm MR has 23 slices), 256×256 in-plane centre.
CROPS = {
    "ct_s3": (HELD_OUT[0][0], slice(16, 48)),
    "mr_mprage": (HELD_OUT[1][0], slice(72, 104)),
    "ct_bone": (HELD_OUT[2][0], slice(0, 32)),
    "mr_brain2": (HELD_OUT[3][0], slice(None)),
}
SIDE = 256
#: Aims of the base steps (the deadzone coder lands about 38–61 dB on these crops).
PSNRS = (32.0, 39.0, 46.0, 54.0, 62.0)
#: Level sets predicted, by the coder's level index (0 = level 1, the finest).
LEVEL_SETS = {"L1": (0,), "L2+": (1, 2, 3, 4), "all": (0, 1, 2, 3, 4)}
#: Positions drawn per volume and level for training (the finest level has ~10^6).
PER_LEVEL = 200_000


def _volume(stem: str, sl: slice, side: int | None = None) -> np.ndarray:
    a = read(find_data_dir() / f"{stem}.nii.gz").array[sl]
    if side is not None:
        y, x = ((n - min(side, n)) // 2 for n in a.shape[1:])
        a = a[:, y : y + side, x : x + side]
    return np.ascontiguousarray(a).astype(np.int64)


def _sizes(p: lifting.Plan) -> list[list[int]]:
    """The block each in-plane level splits (sizes[L]) and its LL (sizes[L + 1])."""
    out = [list(p.shape)]
    for level in range(p.xy_levels):
        out.append([(s + 1) // 2 if a in p.axes(level) else s for a, s in enumerate(out[-1])])
    return out


def _scales(p: lifting.Plan) -> tuple[np.ndarray, list[float]]:
    """Each band's and each level's LL factor to common units: the synthesis norm over 2**(level + 1),
    about the local mean (LL) and differences of means (bands) in the coder's voxel units."""
    norms, _ = lifting.band_norms(p)
    band = np.array([n / 2.0 ** (b.level + 1) for n, b in zip(norms, p.bands)])
    ll = [
        math.prod(lifting._norm_1d(p.shape[a], level + 1, False) for a in (1, 2)) / 2.0 ** (level + 1)
        for level in range(p.xy_levels)
    ]
    return band, ll


def _level_bands(p: lifting.Plan, level: int) -> list[int]:
    return [i for i, b in enumerate(p.bands) if b.level == level]


def _net() -> torch.nn.Sequential:
    sizes = [TAPS, *HIDDEN, 3]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


MACS_PER_POSITION = sum(a * b for a, b in zip([TAPS, *HIDDEN], [*HIDDEN, 3]))


Scales = tuple[float, float]


def _centred(f: torch.Tensor) -> torch.Tensor:
    """The LL around a position less its centre: the prediction ignores the local mean."""
    return f - f[:, TAPS // 2 : TAPS // 2 + 1]


class Predictor:
    """Trained nets (one per level, or one under key None shared by all) and their input and output
    scales (mean |LL less its centre| and mean |band| of the training data): the net sees values
    about 1 at every level."""

    def __init__(self, nets: dict[int | None, torch.nn.Sequential], scales: dict[int | None, Scales]) -> None:
        self.nets, self.scales = nets, scales

    def _apply(self, level: int, f: torch.Tensor) -> torch.Tensor:
        key = level if level in self.nets else None
        s_in, s_out = self.scales[key]
        return self.nets[key](_centred(f) / s_in) * s_out

    def bands(self, ll: np.ndarray, level: int, p: lifting.Plan) -> list[np.ndarray]:
        """The level's three high bands (integers, in band order) predicted from its LL."""
        band_scale, ll_scale = _scales(p)
        z, h, w = ll.shape
        out = np.empty((z, h, w, 3))
        with torch.no_grad():
            for k in range(z):  # a slice at a time keeps the 49 features per position small
                f = torch.from_numpy(_features(ll[k : k + 1] * ll_scale[level], RADIUS, h, w)).float()
                out[k] = self._apply(level, f).double().numpy().reshape(h, w, 3)
        idx = _level_bands(p, level)
        return [
            np.rint(out[: p.bands[i].shape[0], : p.bands[i].shape[1], : p.bands[i].shape[2], j] / band_scale[i]).astype(
                np.int64
            )
            for j, i in enumerate(idx)
        ]


def _pairs(x: np.ndarray, rng: np.random.Generator) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per level, (LL features, the three high coefficients) at up to PER_LEVEL positions, in common units."""
    lo, hi = int(x.min()), int(x.max())
    p = lifting.plan(x.shape, 0)
    c = (x - (lo + hi) // 2) << tc.PRECISION_BITS
    sizes = _sizes(p)
    band_scale, ll_scale = _scales(p)
    out = {}
    for level in range(p.xy_levels):  # lifting.forward a level at a time: each level's LL is kept
        for a in p.axes(level):
            lifting._split(c[:, : sizes[level][1], : sizes[level][2]], a)
        ll = c[:, : sizes[level + 1][1], : sizes[level + 1][2]] * ll_scale[level]
        idx = _level_bands(p, level)
        h, w = (min(p.bands[i].shape[a] for i in idx) for a in (1, 2))
        y = np.stack([c[p.bands[i].block][:, :h, :w] * band_scale[i] for i in idx], -1)
        take = max(1, PER_LEVEL // x.shape[0])
        fs, ys = [], []
        for k in range(x.shape[0]):
            f = _features(ll[k : k + 1], RADIUS, h, w)
            at = rng.choice(f.shape[0], min(take, f.shape[0]), replace=False)
            fs.append(f[at])
            ys.append(y[k].reshape(-1, 3)[at])
        out[level] = (np.concatenate(fs).astype(np.float32), np.concatenate(ys).astype(np.float32))
    return out


def train(iterations: int) -> tuple[Predictor, Predictor]:
    """The per-level predictor and the shared one, trained on TRAIN (open loop, original LL)."""
    rng = np.random.default_rng(0)
    data: dict[int, list] = {}
    for stem, sl in TRAIN:
        for level, pair in _pairs(_volume(stem, sl), rng).items():
            data.setdefault(level, []).append(pair)
    xs = {k: torch.from_numpy(np.concatenate([f for f, _ in v])) for k, v in data.items()}
    ys = {k: torch.from_numpy(np.concatenate([t for _, t in v])) for k, v in data.items()}

    def scales(levels: list[int]) -> Scales:
        s_in = float(torch.cat([_centred(xs[k]).abs().mean(0) for k in levels]).mean())
        return s_in, float(torch.cat([ys[k].abs().mean(0) for k in levels]).mean())

    def fit(levels: list[int]) -> torch.nn.Sequential:
        torch.manual_seed(0)
        net = _net()
        pred = Predictor({None: net}, {None: scales(levels)})
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        per = 4096 // len(levels)  # the levels weigh alike in a shared net's batches
        for _ in range(iterations):
            loss = torch.zeros(())
            for level in levels:
                at = torch.randint(0, xs[level].shape[0], (per,), generator=g)
                loss = loss + (pred._apply(level, xs[level][at]) - ys[level][at]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    levels = sorted(xs)
    per_level = Predictor({k: fit([k]) for k in levels}, {k: scales([k]) for k in levels})
    shared = Predictor({None: fit(levels)}, {None: scales(levels)})
    return per_level, shared


def code(x: np.ndarray, base: float, pred: Predictor | None, levels: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """Section bytes and reconstruction at base step ``base``, ``levels`` predicted in the loop."""
    lo, hi = int(x.min()), int(x.max())
    p, c = tc._coefficients(x, lo, hi, 0)
    norms, low_norm = lifting.band_norms(p)
    steps, low_step = tc._steps(base, norms, low_norm)
    q_low = np.floor(c[p.low] * float(1 << tc.STEP_BITS) / low_step + 0.5).astype(np.int64)
    sizes = _sizes(p)
    rec = np.zeros(p.shape, np.int64)
    rec[p.low] = tc._dequantize_low(q_low, low_step)
    qs: list[np.ndarray] = [np.empty(0)] * len(p.bands)
    offsets = [0] * len(p.bands)
    for level in reversed(range(p.xy_levels)):  # the decoder's order: the level's LL is already rebuilt
        idx = _level_bands(p, level)
        ll = rec[:, : sizes[level + 1][1], : sizes[level + 1][2]]
        guess = pred.bands(ll, level, p) if pred is not None and level in levels else [0] * len(idx)
        for i, g in zip(idx, guess):
            s = int(steps[i])
            qs[i], offsets[i] = tc._band_quantized(c[p.bands[i].block] - g, s)
            rec[p.bands[i].block] = g + tc._dequantize(qs[i], s, offsets[i])
        view = rec[:, : sizes[level][1], : sizes[level][2]]
        for a in reversed(p.axes(level)):
            lifting._merge(view, a)
    out = np.clip(((rec + (1 << (tc.PRECISION_BITS - 1))) >> tc.PRECISION_BITS) + (lo + hi) // 2, lo, hi)
    return len(tc._write(p, qs, steps, offsets, q_low, low_step)), out


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(((x - y).astype(np.float64) ** 2).mean())
    return 10.0 * math.log10(float(x.max() - x.min()) ** 2 / mse)


def cost(pred: Predictor) -> None:
    """Multiply-adds per voxel per level set, and float run time estimated for 512×512×100."""
    t = 0.0
    ll = np.random.default_rng(0).normal(0, 500, (8, 256, 256)).astype(np.int64)
    p = lifting.plan((8, 512, 512), 0)
    t0 = time.perf_counter()
    pred.bands(ll, 0, p)
    t = (time.perf_counter() - t0) / ll.size  # seconds per LL position, features included
    for name, levels in LEVEL_SETS.items():
        per_voxel = sum(MACS_PER_POSITION / 4.0 ** (k + 1) for k in levels)
        n = 512 * 512 * 100 * sum(1 / 4.0 ** (k + 1) for k in levels)
        print(f"cost {name}: {per_voxel:.0f} multiply-adds per voxel, float {t * n:.1f} s on 512x512x100 (1 thread)")


def main(argv: list[str] | None = None) -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--iterations", type=int, default=3000)
    a.add_argument("--crops", default=",".join(CROPS))
    args = a.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    per_level, shared = train(args.iterations)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    cost(shared)
    variants = [
        (f"{kind} {name}", pr, lv)
        for kind, pr in (("per-level", per_level), ("shared", shared))
        for name, lv in LEVEL_SETS.items()
    ]
    for crop in args.crops.split(","):
        x = _volume(*CROPS[crop], SIDE)
        peak = float(x.max() - x.min())
        # Base steps (coefficient units, 2**PRECISION_BITS per voxel unit) aimed at PSNRS.
        bases = [peak * 10 ** (-q / 20) * math.sqrt(12.0) * (1 << tc.PRECISION_BITS) for q in PSNRS]
        ref = [code(x, b, None, ()) for b in bases]
        r_bytes, r_psnr = [n for n, _ in ref], [_psnr(x, y) for _, y in ref]
        print(f"{crop} {x.shape}: codec bytes {r_bytes}, PSNR " + " ".join(f"{q:.2f}" for q in r_psnr), flush=True)
        for name, pr, lv in variants:
            got = [code(x, b, pr, lv) for b in bases]
            t_bytes, t_psnr = [n for n, _ in got], [_psnr(x, y) for _, y in got]
            bd = bd_rate(r_bytes, r_psnr, t_bytes, t_psnr)
            ratios = " ".join(f"{t / r:.3f}" for t, r in zip(t_bytes, r_bytes))
            dpsnr = " ".join(f"{t - r:+.2f}" for t, r in zip(t_psnr, r_psnr))
            print(f"  {name:14s} BD {bd:+.2f} %  bytes ratio {ratios}  dPSNR {dpsnr}", flush=True)


if __name__ == "__main__":
    main()
