"""Prototype bench: the predictive coder on fixed crops of train-split volumes, against peers.

The design of :mod:`medcodec.coding.predictive` was chosen on these crops, never on the test split.
Peer rates (JPEG XL e7 and JPEG-LS slice by slice, tomoz and SZ3 on the whole crop) are
measured once and cached; each run then prints, per crop and bound, the coder's bits per
voxel and its ratio to JPEG XL (lossless) or JPEG-LS NEAR, and to tomoz or SZ3 ABS::

    python -m benchmarks.crops                       # every crop, bounds 0,1,2,4
    python -m benchmarks.crops --bounds 0 --set N_ERR_CONTEXT=12

``--set NAME=VALUE`` overrides one of the coder's module constants (a Python literal) for an
experiment; the streams it makes are then not format 2.0 streams.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from medcodec.coding import predictive
from medcodec.files.images import read
from medcodec.training.datasets import find_data_dir

#: (file stem, z, y, x) crops: 5 mm and 2-3 mm CT, 1-1.5 mm and 6.5 mm MR, small volumes, air.
CROPS: dict[str, tuple[slice, slice, slice]] = {
    "ct_chest_philips_brilliance16_lungpetctdx_a0001_s2": (slice(0, 48), slice(128, 384), slice(128, 384)),
    "ct_head_toshiba_aquilion_fc63_axial_dicomviewer": (slice(0, 33), slice(128, 384), slice(128, 384)),
    "ct_trunk_siemens_mct_totalseg_dicom": (slice(0, 20), slice(128, 384), slice(128, 384)),
    "ct_thorax_aorta_totalseg_crop": (slice(0, 64), slice(None), slice(None)),
    "mr_head_t1mprage_vsseg001_dicom": (slice(30, 78), slice(128, 384), slice(128, 384)),
    "mr_brain_t1_brain1_pyradiomics": (slice(None), slice(None), slice(None)),
    "mr_brain_bold_niivue": (slice(None), slice(None), slice(None)),
    "mr_body_totalseg_example": (slice(None), slice(None), slice(None)),
    "ct_abdomen_totalseg_example": (slice(None), slice(None), slice(None)),
    "ct_head_toshiba_aquilion_coronal_mpr_dicomviewer": (slice(20, 36), slice(None), slice(None)),
    "mr_brain_flair_stroke_niivue": (slice(40, 80), slice(None), slice(None)),
}


def peer_rates(a: np.ndarray) -> dict[str, float]:
    """Bits per voxel of the peers on one crop (NaN where a peer cannot take the dtype)."""
    import imagecodecs
    import pysz
    import tomoz

    u = (a.astype(np.int64) - int(a.min())).astype(np.uint16)
    n = a.size
    out = {"JPEG XL": 8 * sum(len(imagecodecs.jpegxl_encode(s, lossless=True, effort=7)) for s in u) / n}
    out["tomoz"] = 8 * len(tomoz.encode(a)) / n if a.dtype.itemsize <= 2 else math.nan
    for k in (0, 1, 2, 4):
        out[f"JPEG-LS {k}"] = 8 * sum(len(imagecodecs.jpegls_encode(s, level=k)) for s in u) / n
    for k in (1, 2, 4):
        cfg = pysz.szConfig()
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(k)
        out[f"SZ3 {k}"] = 8 * pysz.sz.compress(a.astype(np.int32), cfg)[0].size / n
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bounds", default="0,1,2,4", help="max_error values, comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a coder constant")
    ap.add_argument("--cache", type=Path, default=Path("runs/crops-peers.json"), help="peer rates cache")
    ap.add_argument("names", nargs="*", help="crop names (default: all)")
    args = ap.parse_args(argv)
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(predictive, name, ast.literal_eval(value))
    predictive.N_CLASSES = predictive.N_ACTIVITY * predictive.N_ORIENT
    data = find_data_dir()
    if data is None:
        raise SystemExit("no data folder: set MEDCODEC_DATA or provide ../shared/data")
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    bounds = [int(b) for b in args.bounds.split(",")]
    ratios: dict[int, list[tuple[float, float]]] = {d: [] for d in bounds}
    for name in args.names or list(CROPS):
        a = np.ascontiguousarray(read(data / f"{name}.nii.gz").array[CROPS[name]])
        if name not in cache:
            cache[name] = peer_rates(a)
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_text(json.dumps(cache, indent=1))
        peers = cache[name]
        x = a.astype(np.int64)
        cells = []
        for d in bounds:
            start = time.perf_counter()
            section, recon = predictive.encode_tile(x, d, int(x.min()), int(x.max()))
            seconds = time.perf_counter() - start
            if np.abs(recon - x).max() > d:
                raise SystemExit(f"{name}: bound {d} broken")
            bpv = 8 * len(section) / x.size
            ref = peers["JPEG XL"] if d == 0 else peers[f"JPEG-LS {d}"]
            ref2 = peers["tomoz"] if d == 0 else peers[f"SZ3 {d}"]
            ratios[d].append((bpv / ref, bpv / ref2))
            cells.append(f"d{d} {bpv:.3f} ({bpv / ref:.3f}/{bpv / ref2:.3f})")
        print(f"{name[:28]:28s} {str(a.shape):16s}", "  ".join(cells), f"encode {seconds:.1f} s", flush=True)
    print(
        "mean ratio to JPEG XL or JPEG-LS / to tomoz or SZ3:",
        "  ".join(
            f"d{d} {statistics.fmean(r[0] for r in v):.3f}/{statistics.fmean(r[1] for r in v if not math.isnan(r[1])):.3f}"
            for d, v in ratios.items()
        ),
    )


if __name__ == "__main__":
    main()
