"""The level-1 cross-band predictor, float and integer-exact, in the coder's closed loop on the test split.

    PYTHONPATH=src:. python -m benchmarks.crossband_level1 [--iterations 3000] [--hidden 32,32]

Trains ``benchmarks.crossband_train``'s float predictor on level 1 of train-split volumes
(:data:`TRAIN`, open loop: original low band), converts it to the integer net decoders would
run (``benchmarks.crossband_int``), and codes 32×256×256 centre crops of every test-split
volume (fewer slices where it has fewer) at five base steps with ``benchmarks.crossband_loop``'s
closed loop (in-plane levels only, ``z_levels`` 0): the plain coder, the float predictor and
the integer one at level 1. Prints per crop the BD-rate of each against the plain coder and
the integer net's run time on a 512×512×100 volume's level 1 (its 100×256×256 low band).
Results: benchmarks/ATTEMPTS.md, "Learned parts of the transform" (L5).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks import crossband_int as cb
from benchmarks import crossband_train as tr
from benchmarks.bdrate import bd_rate
from benchmarks.crossband_loop import PSNRS, _psnr, code
from medcodec.coding import lifting
from medcodec.coding import transform as tc
from medcodec.files.images import read
from medcodec.training.datasets import load_manifest

#: Train-split volumes and the slices used (thin-slice volumes, where the coder takes z levels, left out).
TRAIN = {
    "ct_chest_philips_brilliance16_lungpetctdx_a0001_s2": slice(10, 40),
    "ct_chest_philips_brilliance16_lungpetctdx_a0001_s3": slice(10, 40),
    "ct_head_toshiba_aquilion_fc63_axial_dicomviewer": slice(5, 25),
    "ct_head_toshiba_aquilion_fc30bone_axial_dicomviewer": slice(5, 25),
    "ct_chest_lidc_vtkjs": slice(20, 50),
    "ct_abdomen_totalseg_example": slice(None),
    "mr_head_t1mprage_vsseg001_dicom": slice(30, 90),
    "mr_brain_t1_brain1_pyradiomics": slice(None),
    "mr_brain_t1_brain2_pyradiomics": slice(None),
    "mr_brain_flair_stroke_niivue": slice(None),
    "mr_brain_t2_stroke_vrd": slice(None),
    "mr_body_totalseg_example": slice(None),
}
PER_VOLUME = 120_000
SLICES, SIDE = 32, 256


def _integer(stem_path, sl: slice = slice(None)) -> np.ndarray:
    return np.ascontiguousarray(read(stem_path).array[sl]).astype(np.int64)


def _crop(x: np.ndarray) -> np.ndarray:
    z0 = max(0, (x.shape[0] - SLICES) // 2)
    y, w = ((n - min(SIDE, n)) // 2 for n in x.shape[1:])
    return x[z0 : z0 + SLICES, y : y + SIDE, w : w + SIDE]


class _Level1:
    """crossband_loop's predictor interface (``bands(ll, level, p)``) for level 1 only."""

    def __init__(self, predict) -> None:
        self.predict = predict

    def bands(self, ll: np.ndarray, level: int, p: lifting.Plan) -> list[np.ndarray]:
        out = self.predict(ll)
        idx = [b for b in p.bands if b.level == 0]
        return [out[j][: b.shape[0], : b.shape[1], : b.shape[2]] for j, b in enumerate(idx)]


def _float_predict(model: tr.FloatCrossBand):
    def predict(ll: np.ndarray) -> np.ndarray:
        z, h, w = ll.shape
        out = np.empty((3, z, h, w), np.int64)
        with torch.no_grad():
            for k in range(z):
                f = torch.from_numpy(cb.centred_neighbourhoods(ll[k]).astype(np.float32))
                out[:, k] = np.rint(model(f).double().numpy()).astype(np.int64).T.reshape(3, h, w)
        return out

    return predict


def main(argv: list[str] | None = None) -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--iterations", type=int, default=3000)
    a.add_argument("--hidden", default="32,32")
    args = a.parse_args(argv)
    torch.set_num_threads(1)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    train = {e.name: e.path for e in load_manifest(split="train")}
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pairs = [tr.level_one_pairs(_integer(train[s], sl), PER_VOLUME, rng) for s, sl in TRAIN.items()]
    model = tr.fit(
        np.concatenate([f for f, _ in pairs]), np.concatenate([y for _, y in pairs]), hidden, args.iterations
    )
    net = tr.to_integer(model)
    macs = sum(layer.weight.size for layer in net.layers)
    print(f"trained {hidden} in {time.perf_counter() - t0:.0f} s; {macs} multiply-adds per low-band position")
    ll = np.random.default_rng(0).normal(0, 3000, (100, 256, 256)).astype(np.int64)
    t0 = time.perf_counter()
    net.predict(ll)
    print(f"integer net on a 512x512x100 volume's level 1: {time.perf_counter() - t0:.1f} s (1 thread)", flush=True)
    variants = {"float": _Level1(_float_predict(model)), "integer": _Level1(net.predict)}
    bds: dict[str, dict[str, list[float]]] = {}
    for e in load_manifest(split="test"):
        x = _crop(_integer(e.path))
        peak = float(x.max() - x.min())
        bases = [peak * 10 ** (-q / 20) * math.sqrt(12.0) * (1 << tc.PRECISION_BITS) for q in PSNRS]
        ref = [code(x, b, None, ()) for b in bases]
        r_bytes, r_psnr = [n for n, _ in ref], [_psnr(x, y) for _, y in ref]
        print(f"{e.name} {x.shape}: bytes {r_bytes}, PSNR " + " ".join(f"{q:.2f}" for q in r_psnr), flush=True)
        for name, pred in variants.items():
            got = [code(x, b, pred, (0,)) for b in bases]
            t_bytes, t_psnr = [n for n, _ in got], [_psnr(x, y) for _, y in got]
            bd = bd_rate(r_bytes, r_psnr, t_bytes, t_psnr)
            bds.setdefault(name, {}).setdefault(e.modality, []).append(bd)
            ratios = " ".join(f"{t / r:.3f}" for t, r in zip(t_bytes, r_bytes))
            print(f"  {name:8s} BD {bd:+.2f} %  bytes ratio {ratios}", flush=True)
    for name, by in bds.items():
        print(name, " ".join(f"{m} mean {np.mean(v):+.2f} %" for m, v in sorted(by.items())))


if __name__ == "__main__":
    main()
