"""Replace one codec's rows of a benchmark run by those of a newer run, and write the report.

    python -m benchmarks.merge BASE NEWER --codec medcodec --mode lossy [--out benchmarks]

BASE and NEWER are folders written by ``python -m benchmarks.run`` (``results.json``). The
report keeps every row of BASE except the codec's rows in that mode, which come from NEWER
(the volumes must be the same), and lists both runs' commands and dates in its method
section. It redraws the PSNR curves; figures that need decoded slices or SSIM are left out
unless both runs have them. Used when only medcodec changed: the peers' sweeps take most of a
full run's hour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .measure import Record
from .report import write_results


def merged(base: dict, newer: dict, codec: str, mode: str) -> tuple[list[Record], dict]:
    """Records of ``base`` with ``codec``'s ``mode`` rows taken from ``newer``, and the report's meta."""
    keep = [r for r in base["records"] if not (r["codec"] == codec and r["mode"] == mode)]
    new = [r for r in newer["records"] if r["codec"] == codec and r["mode"] == mode]
    if not new:
        raise SystemExit(f"{codec} has no {mode} rows in the newer run")
    volumes = {v["name"] for v in base["meta"]["volumes"]}
    missing = {r["volume"] for r in new} - volumes
    if missing:
        raise SystemExit(f"the newer run has volumes the base run lacks: {', '.join(sorted(missing))}")
    meta = dict(base["meta"])
    meta["command"] = (
        f"{base['meta']['command']} ({base['meta']['date']}); {codec} {mode} rows from "
        f"{newer['meta']['command']} ({newer['meta']['date']}), merged by python -m benchmarks.merge"
    )
    meta["messages"] = [*base["meta"].get("messages", []), *newer["meta"].get("messages", [])]
    meta["figures"] = []
    return [Record.from_json(r) for r in keep + new], meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path)
    p.add_argument("newer", type=Path)
    p.add_argument("--codec", default="medcodec")
    p.add_argument("--mode", default="lossy", choices=("lossy", "near-lossless", "lossless"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    base = json.loads((args.base / "results.json").read_text())
    newer = json.loads((args.newer / "results.json").read_text())
    records, meta = merged(base, newer, args.codec, args.mode)
    from .figures import rd_figure

    fig_dir = args.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for modality in ("CT", "MR", "other"):
        names = [v["name"] for v in meta["volumes"] if v["modality"] == modality]
        if names:
            path = fig_dir / f"psnr_bpv_{modality.lower()}.png"
            rd_figure(records, names, "psnr", f"{modality}: PSNR vs bits per voxel", path)
            meta["figures"].append(str(path.relative_to(args.out)))
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "records": [r.to_json() for r in records]}, indent=1, allow_nan=False) + "\n"
    )
    write_results(records, meta, args.out / "RESULTS.md")
    print(f"wrote {args.out / 'RESULTS.md'} ({len(records)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
