"""Benchmark medcodec and the standard codecs on the same volumes; write tables and figures.

Usage::

    python -m benchmarks.run [--out DIR] [--quick] [FILES ...]

Without FILES it runs on the test split of the project's data (``MEDCODEC_DATA`` or
``../shared/data``). It writes ``DIR/RESULTS.md``, ``DIR/results.json`` and
``DIR/figures/*.png`` (DIR: ``benchmarks``, or ``runs/bench-quick`` with ``--quick`` so a
smoke test never overwrites the committed results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import (
    CODEC_ORDER,
    JPEG2000,
    MEDCODEC,
    MEDCODEC_MAX_ERRORS,
    MEDCODEC_QUALITIES,
    QUICK_MEDCODEC_MAX_ERRORS,
    QUICK_MEDCODEC_QUALITIES,
    CodecSetting,
    baseline_settings,
    medcodec_settings,
    medcodec_status,
    versions,
)
from .measure import Record, measure
from .metrics import PeakMemory, return_freed_memory_to_os, ssim_region
from .volumes import BenchVolume, center_crop, default_volume_paths, load_volume

__all__ = ["main", "run_benchmark"]

#: --quick crops every volume to its central block of this shape (z, y, x).
QUICK_CROP = (12, 96, 96)
#: Default SSIM budget: bigger volumes get SSIM on their central slab of whole slices.
SSIM_MAX_VOXELS = 4_000_000
_WARMUP_CROP = (8, 32, 32)


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="volumes to run on (default: the test split)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: benchmarks, or runs/bench-quick with --quick)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"crop volumes to {'x'.join(map(str, QUICK_CROP))} and sweep fewer settings",
    )
    p.add_argument("--split", default="test", help="manifest split when no FILES are given")
    p.add_argument(
        "--qualities",
        type=_int_list,
        default=None,
        help=f"medcodec qualities, comma-separated (default {','.join(map(str, MEDCODEC_QUALITIES))})",
    )
    p.add_argument(
        "--max-errors",
        type=_int_list,
        default=None,
        help=f"medcodec max_error values (default {','.join(map(str, MEDCODEC_MAX_ERRORS))})",
    )
    p.add_argument(
        "--codecs",
        type=lambda s: [c.strip() for c in s.split(",")],
        default=None,
        help=f"only these codecs, comma-separated from: {', '.join(CODEC_ORDER)}",
    )
    p.add_argument("--no-medcodec", action="store_true", help="baselines only")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM")
    p.add_argument(
        "--ssim-max-voxels",
        type=int,
        default=SSIM_MAX_VOXELS,
        help="SSIM on the central slab of at most this many voxels (default %(default)s)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _warm_up(settings: Sequence[CodecSetting], vol: BenchVolume) -> None:
    """Run each medcodec setting once on a small crop so model loading is not timed."""
    crop = center_crop(vol, _WARMUP_CROP)
    for s in settings:
        if s.codec == MEDCODEC:
            try:
                s.codec_impl.decode(s.codec_impl.encode(crop))
            except Exception:  # the timed run records the failure
                pass


def run_benchmark(
    volumes: Sequence[BenchVolume],
    settings: Sequence[CodecSetting],
    *,
    ssim_max_voxels: int | None = SSIM_MAX_VOXELS,
    compute_ssim: bool = True,
    keep_slices_of: Sequence[str] = (MEDCODEC, JPEG2000),
    warm_up: bool = True,
) -> tuple[list[Record], dict[str, dict[str, np.ndarray]], list[str]]:
    """Measure every setting on every volume.

    Args:
        volumes: The volumes (loaded).
        settings: Codec settings.
        ssim_max_voxels: SSIM budget (see :func:`benchmarks.metrics.ssim_region`).
        compute_ssim: False skips SSIM.
        keep_slices_of: Codecs whose decoded middle slices are kept for the panels.
        warm_up: First run each medcodec setting on a small crop of the first volume.

    Returns:
        Records; per volume, setting key -> decoded middle slice (plus ``"original"``);
        messages about skipped (volume, codec) pairs.
    """
    records: list[Record] = []
    slices: dict[str, dict[str, np.ndarray]] = {}
    messages: list[str] = []
    warmed = not warm_up
    for vol in volumes:
        kept = slices.setdefault(vol.name, {"original": np.array(vol.array[vol.array.shape[0] // 2])})
        if not warmed:
            _warm_up(settings, vol)
            warmed = True
        reported: set[str] = set()
        for s in settings:
            why = s.codec_impl.unsupported(vol)
            if why is not None:
                if s.codec not in reported:
                    messages.append(f"{s.codec} skipped on {vol.name}: {why}")
                    reported.add(s.codec)
                continue
            t0 = time.perf_counter()
            rec, mid = measure(s, vol, ssim_max_voxels=ssim_max_voxels, compute_ssim=compute_ssim)
            records.append(rec)
            if rec.error is not None:
                _log(f"  {vol.name} {s.key}: FAILED {rec.error}")
                continue
            if mid is not None and s.codec in keep_slices_of and s.mode == "lossy":
                kept[s.key] = mid
            flag = "" if rec.bound_ok in (None, True) else "  BOUND BROKEN"
            ssim = "—" if rec.ssim is None else f"{rec.ssim:.4f}"
            _log(
                f"  {vol.name[:40]:40s} {s.key:24s} {rec.bpv:7.3f} bpv  {rec.psnr:6.2f} dB  "
                f"SSIM {ssim}  {time.perf_counter() - t0:6.1f} s{flag}"
            )
    return records, slices, messages


def _volume_meta(vol: BenchVolume, ssim_max_voxels: int | None) -> dict[str, Any]:
    meta = {
        "name": vol.name,
        "modality": vol.modality,
        "shape": list(vol.array.shape),
        "spacing": [float(s) for s in vol.spacing],
        "dtype": str(vol.array.dtype),
        "source": vol.source,
        "min": float(vol.array.min()),
        "max": float(vol.array.max()),
        "ssim_slices": None,
    }
    if ssim_max_voxels is not None:
        zs = ssim_region(vol.array.shape, ssim_max_voxels)[0]
        if zs.stop - zs.start < vol.array.shape[0]:
            meta["ssim_slices"] = f"{zs.start}:{zs.stop}"
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 when medcodec or a peer broke a guarantee)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.codecs or ()) - set(CODEC_ORDER))
    if unknown:
        parser.error(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(CODEC_ORDER)}")
    out = args.out or (Path("runs/bench-quick") if args.quick else Path(__file__).resolve().parent)
    out.mkdir(parents=True, exist_ok=True)

    # Freed buffers go back to the OS, so each setting's peak-RSS growth sees its own buffers.
    return_freed_memory_to_os()
    settings, messages = baseline_settings(quick=args.quick, codecs=args.codecs)
    if not args.no_medcodec and (args.codecs is None or MEDCODEC in args.codecs):
        why = medcodec_status()
        if why is None:
            qualities = (
                args.qualities
                if args.qualities is not None
                else (QUICK_MEDCODEC_QUALITIES if args.quick else MEDCODEC_QUALITIES)
            )
            max_errors = (
                args.max_errors
                if args.max_errors is not None
                else (QUICK_MEDCODEC_MAX_ERRORS if args.quick else MEDCODEC_MAX_ERRORS)
            )
            settings += medcodec_settings(qualities, max_errors)
        else:
            messages.append(why)
    elif args.no_medcodec:
        messages.append("medcodec not run (--no-medcodec)")
    for msg in messages:
        _log(msg)

    paths = [(p, None) for p in args.files] or default_volume_paths(args.split)
    ssim_budget = None if args.no_ssim else args.ssim_max_voxels
    records: list[Record] = []
    slices: dict[str, dict[str, np.ndarray]] = {}
    vol_meta: list[dict[str, Any]] = []
    started = time.perf_counter()
    load_start = os.getloadavg()[0]  # other jobs on the machine slow every codec down
    for path, modality in paths:
        vol = load_volume(path, modality)
        if args.quick:
            vol = center_crop(vol, QUICK_CROP)
        _log(f"{vol.name} ({vol.modality}, {'x'.join(map(str, vol.array.shape))} {vol.array.dtype})")
        vol_meta.append(_volume_meta(vol, ssim_budget))
        # One volume in memory at a time; only middle slices are kept for the figures.
        recs, sl, msgs = run_benchmark(
            [vol], settings, ssim_max_voxels=ssim_budget, compute_ssim=not args.no_ssim, warm_up=not records
        )
        records += recs
        slices.update(sl)
        messages += msgs
        del vol

    meta: dict[str, Any] = {
        "command": "python -m benchmarks.run" + ("" if not argv else " " + shlex.join(argv)),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "volumes": vol_meta,
        "versions": versions(),
        "messages": messages,
        "ssim_max_voxels": ssim_budget,
        "memory_method": PeakMemory.method,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "figures": [],
    }
    if not args.no_figures:
        meta["figures"] = _write_figures(records, slices, vol_meta, out)

    from .report import write_results

    (out / "results.json").write_text(
        json.dumps({"meta": meta, "records": [r.to_json() for r in records]}, indent=1, allow_nan=False) + "\n"
    )
    write_results(records, meta, out / "RESULTS.md")
    _log(
        f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {len(meta['figures'])} figures "
        f"in {meta['elapsed_s']:.0f} s"
    )
    broken = [r for r in records if r.bound_ok is False or r.error is not None]
    return 1 if broken else 0


def _write_figures(
    records: Sequence[Record], slices: dict[str, dict[str, np.ndarray]], vol_meta: Sequence[dict[str, Any]], out: Path
) -> list[str]:
    """Draw every figure into ``out/figures``; returns their paths relative to ``out``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _log("figures skipped: matplotlib not installed")
        return []
    from .figures import panel_figure, rd_figure

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    for modality in ("CT", "MR", "other"):
        names = [v["name"] for v in vol_meta if v["modality"] == modality]
        if not names:
            continue
        for metric, label in (("psnr", "PSNR"), ("ssim", "3D SSIM")):
            if metric == "ssim" and not any(r.ssim is not None and r.mode != "lossless" for r in records):
                continue
            written.append(
                rd_figure(
                    records,
                    names,
                    metric,
                    f"{modality}: {label} vs bits per voxel",
                    fig_dir / f"{metric}_bpv_{modality.lower()}.png",
                )
            )
    for v in vol_meta:
        kept = slices.get(v["name"], {})
        p = (
            panel_figure(
                v["name"], v["modality"], kept.get("original"), kept, records, fig_dir / f"panel_{v['name']}.png"
            )
            if "original" in kept
            else None
        )
        if p is not None:
            written.append(p)
    return [str(p.relative_to(out)) for p in written]


if __name__ == "__main__":
    sys.exit(main())
