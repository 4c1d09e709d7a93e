"""Encode and decode speed of medcodec on a 512×512×N int16 CT, with the machine's load.

    PYTHONPATH=src:. python -m benchmarks.speed [--slices 100] [--repeats 3] [--max-errors 0,2] [--qualities 40]
    PYTHONPATH=src:. python -m benchmarks.speed --region-slices 300   # a 64^3 region against a full decode

The volume is the first N slices of the test split's abdomen CT (134×512×512, int16, 3 mm).
Each setting is timed ``--repeats`` times through the public API (``medcodec.compress`` /
``decompress``, wall clock) after one untimed call on a small crop, which loads what a first
call loads (compiled kernels, models). MB/s counts raw voxel bytes (10^6 bytes of int16).
Prints one Markdown table row per setting: median and range of the repeats, with the
1-minute load average before and after, since other jobs on the machine slow every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import medcodec
from medcodec.training.datasets import load_manifest


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-errors", default="0,2", help="comma-separated bounds (0: lossless)")
    p.add_argument("--qualities", default="40", help="comma-separated lossy qualities (40: the default)")
    p.add_argument(
        "--region-slices",
        type=int,
        default=0,
        metavar="N",
        help="instead: time a 64^3 region against a full decode of the CT repeated to N slices",
    )
    args = p.parse_args(argv)
    src = next(e for e in load_manifest(split="test") if e.name.startswith("ct_abdomen_philips"))
    a = np.ascontiguousarray(medcodec.read(src.path).array[: args.slices])
    mb = a.nbytes / 1e6
    print(f"volume: {src.name}[:{args.slices}], {a.shape[0]}×{a.shape[1]}×{a.shape[2]} {a.dtype}, {mb:.1f} MB")
    if args.region_slices:
        _region_speed(src, args.region_slices, args.repeats)
        return
    print("| setting | bpv | encode MB/s (median, range) | decode MB/s (median, range) | load before / after |")
    print("|---|---|---|---|---|")
    settings = [{"max_error": int(b)} for b in args.max_errors.split(",") if b.strip()]
    settings += [{"quality": int(q)} for q in args.qualities.split(",") if q.strip()]
    for kwargs in settings:
        medcodec.decompress(medcodec.compress(a[:8, :64, :64], **kwargs))  # first-call costs, untimed
        before = _load()
        enc, dec = [], []
        for _ in range(args.repeats):
            dt, data = _timed(medcodec.compress, a, **kwargs)
            enc.append(mb / dt)
            dt, vol = _timed(medcodec.decompress, data)
            dec.append(mb / dt)
            _check(a, vol.array, kwargs)
        bound = kwargs.get("max_error")
        name = f"quality={kwargs['quality']}" if bound is None else "lossless" if bound == 0 else f"max_error={bound}"
        print(
            f"| {name} | {8 * len(data) / a.size:.3f} | {statistics.median(enc):.1f} ({min(enc):.1f}–{max(enc):.1f}) "
            f"| {statistics.median(dec):.1f} ({min(dec):.1f}–{max(dec):.1f}) | {before:.2f} / {_load():.2f} |"
        )


def _check(a: np.ndarray, out: np.ndarray, kwargs: dict) -> None:
    """Stop if a decoded volume misses its guarantee (the bound, or the quality's PSNR floor)."""
    if "max_error" in kwargs:
        err = np.abs(out.astype(np.int64) - a).max()
        if err > kwargs["max_error"]:
            raise SystemExit(f"max_error={kwargs['max_error']}: decoded error {err}")
        return
    span = float(a.max()) - float(a.min())
    psnr = 10 * np.log10(span**2 / np.mean((out.astype(np.float64) - a) ** 2))
    if psnr < 20 + kwargs["quality"] / 2:
        raise SystemExit(f"quality={kwargs['quality']}: PSNR {psnr:.2f} dB below its floor")


def _region_speed(src, slices: int, repeats: int) -> None:
    """Full lossless decode against ``decompress(region=...)`` of a 64^3 block."""
    a = medcodec.read(src.path).array
    a = np.ascontiguousarray(np.concatenate([a] * (-(-slices // a.shape[0])))[:slices])
    data = medcodec.compress(a, max_error=0)
    region = (slice(a.shape[0] // 2, a.shape[0] // 2 + 64), slice(64, 128), slice(64, 128))
    seen: list[int] = []
    part = medcodec.decompress(data, region=region, progress=lambda i, n: seen.append(n))
    if not np.array_equal(part.array, a[region]):
        raise SystemExit("region decode differs from the original")
    full = statistics.median(_timed(medcodec.decompress, data)[0] for _ in range(repeats))
    block = statistics.median(_timed(medcodec.decompress, data, region=region)[0] for _ in range(repeats))
    print(
        f"{a.shape[0]}×{a.shape[1]}×{a.shape[2]} int16 lossless, {medcodec.info(data).n_tiles} tiles; region "
        f"{tuple((r.start, r.stop) for r in region)} touches {seen[-1]} tiles: full decode {full:.2f} s, "
        f"region {block:.3f} s ({full / block:.1f}× faster); load {_load():.2f}"
    )


if __name__ == "__main__":
    main()
