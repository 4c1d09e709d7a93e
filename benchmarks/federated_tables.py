"""Table priors trained federated, centralized and local-only, measured with the real codec.

Usage::

    PYTHONPATH=src:. python -m benchmarks.federated_tables --out runs/fed-tables

The sites are the manifest's ``site`` values over the **train** split. Every arm counts the same
per-volume statistics (:func:`medcodec.training.tables.count_volumes`, cached in ``OUT/counts``:
a volume's counts depend on the volume alone, so the arms share the cache):

- federated: each site's :class:`medcodec_fed.tables.SiteCounts` message, summed by
  :func:`medcodec_fed.tables.aggregate_counts`;
- centralized: the pooled train volumes counted at one place;
- local-only: each site's own counts.

Each prior then codes the **test** split's volumes (central crops of at most 32x256x256, as
benchmarks/federated.py) at qualities 20 ... 90 through ``medcodec.compress(tables=PATH)``;
the reference arm ``none`` sends every table (format 4.0's coding). A prior changes only the
entropy coding, never the decoded voxels (checked here), so the BD-rate is the rate change at
the same PSNR. Results: ``OUT/results.json`` and benchmarks/FEDERATED_TABLES.md.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .json_files import read_json, write_json

QUALITIES = (20, 30, 40, 50, 60, 70, 80, 90)
CROP = (32, 256, 256)
REPORT = Path(__file__).resolve().parent / "FEDERATED_TABLES.md"


def build_priors(out: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Train every arm's prior; returns name -> prior path (or "none") and facts for the report."""
    from medcodec.coding.priors import NO_PRIOR, TableCounts, save_prior
    from medcodec.training.datasets import load_manifest
    from medcodec.training.tables import count_volumes
    from medcodec_fed.sites import Site
    from medcodec_fed.tables import aggregate_counts, count_site

    cache = out / "counts-cache"
    groups: dict[str, list[Path]] = {}
    for e in load_manifest(split="train"):
        groups.setdefault(e.site, []).append(e.path)
    sites = [Site.from_paths(name, paths, hold_out=0) for name, paths in sorted(groups.items())]
    updates = [count_site(s, cache) for s in sites]
    federated = aggregate_counts(updates)
    central = count_volumes(cache, [p for s in sites for p in s.train])
    same = federated.to_arrays().keys() == central.to_arrays().keys() and all(
        np.array_equal(a, central.to_arrays()[k]) for k, a in federated.to_arrays().items()
    )
    priors = {"none": NO_PRIOR}
    priors["federated"] = str(save_prior(federated, {"arm": "federated", "sites": len(sites)}, out / "federated"))
    priors["centralized"] = str(save_prior(central, {"arm": "centralized"}, out / "centralized"))
    facts: dict[str, Any] = {"federated_equals_centralized_counts": bool(same), "sites": {}}
    for u in updates:
        counts = TableCounts.from_arrays(dict(u.counts))
        facts["sites"][u.site] = {"volumes": u.volumes, "counts": counts.total(), "keys": len(counts.tokens)}
        if counts.tokens:
            priors[f"local-{u.site}"] = str(
                save_prior(counts, {"arm": "local", "site": u.site}, out / f"local-{u.site}")
            )
    return priors, facts


def measure(out: Path, priors: dict[str, str]) -> dict[str, Any]:
    """Bytes per (test volume, quality, prior), with the PSNR; cached in ``OUT/results.json``."""
    import medcodec
    from medcodec.files.images import read
    from medcodec.training.datasets import load_manifest
    from medcodec.volume import Volume, center_crop

    from .metrics import psnr

    path = out / "results.json"
    results = read_json(path, {"points": {}})
    for e in load_manifest(split="test"):
        if np.dtype(e.dtype).kind not in "iu":
            continue
        full = read(e.path)
        vol = Volume(center_crop(full.array, CROP), full.spacing, full.origin, full.direction)
        for q in QUALITIES:
            key = f"{e.name}/{q}"
            point = results["points"].setdefault(key, {"site": e.site, "modality": e.modality, "bytes": {}})
            digest = point.get("digest")
            for arm, prior in priors.items():
                if arm in point["bytes"]:
                    continue
                t0 = time.perf_counter()
                data = medcodec.compress(vol, quality=q, tables=prior)
                decoded = medcodec.decompress(data, tables=None if prior == "none" else prior).array
                d = hashlib.sha256(decoded.tobytes()).hexdigest()
                if digest is None:
                    point["digest"], digest = d, d
                    value = psnr(vol.array, decoded)
                    point["psnr"] = value if math.isfinite(value) else None  # exact: no PSNR
                    point["voxels"] = int(decoded.size)
                elif d != digest:
                    raise AssertionError(f"{key}: prior {arm} changed the decoded voxels")
                point["bytes"][arm] = len(data)
                print(f"{key} {arm}: {len(data)} B, {time.perf_counter() - t0:.1f} s", flush=True)
            write_json(path, results)
    return results


def _curve(results: dict, name: str, arm: str) -> tuple[list[float], list[float]]:
    pts = [p for k, p in results["points"].items() if k.rsplit("/", 1)[0] == name and p["psnr"] is not None]
    return [8 * p["bytes"][arm] / p["voxels"] for p in pts], [p["psnr"] for p in pts]


def bd_tables(results: dict, arms: list[str]) -> dict[str, Any]:
    """BD-rates: every arm vs none, federated vs centralized, federated vs each local-only model
    on the test volumes of the other sites."""
    from .bdrate import bd_rate

    names = sorted({k.rsplit("/", 1)[0] for k in results["points"]})
    site = {k.rsplit("/", 1)[0]: p["site"] for k, p in results["points"].items()}
    modality = {k.rsplit("/", 1)[0]: p["modality"] for k, p in results["points"].items()}

    def bd(name: str, ref: str, test: str) -> float | None:
        return bd_rate(*_curve(results, name, ref), *_curve(results, name, test))

    out: dict[str, Any] = {"vs_none": {}, "fed_vs_central": {}, "fed_vs_local": {}, "volumes": names}
    for arm in arms:
        if arm != "none":
            out["vs_none"][arm] = {n: bd(n, "none", arm) for n in names}
    out["fed_vs_central"] = {n: bd(n, "centralized", "federated") for n in names}
    for arm in arms:
        if arm.startswith("local-"):
            s = arm.removeprefix("local-")
            out["fed_vs_local"][s] = {n: bd(n, arm, "federated") for n in names if site[n] != s}
    out["modality"] = modality
    out["site"] = site
    return out


def _mean(values) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def report(bd: dict[str, Any], facts: dict[str, Any], priors: dict[str, str], command: str) -> str:
    names, mod = bd["volumes"], bd["modality"]
    lines = [
        "# Federated training of the table prior: federated vs centralized vs local-only",
        "",
        f"Produced on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` "
        "(raw numbers: `runs/fed-tables/results.json`). What is measured and how: the module's "
        "docstring (benchmarks/federated_tables.py).",
        "",
        "The table prior is the transform coder's learned part (docs/FORMAT.md, sections 12.11 and 12.12): "
        "frequency-table rows the encoder may take from it instead of sending them. A site sends "
        "only integer counts (medcodec_fed.tables.SiteCounts); the server sums them.",
        "",
        f"- Federated counts equal the centralized counts exactly: **{facts['federated_equals_centralized_counts']}**.",
        "- Sites (train split): "
        + ", ".join(f"`{s}` ({f['volumes']} volumes, {f['counts']:,} counts)" for s, f in facts["sites"].items())
        + ". A site whose volumes are all fractional floats has no counts (the learned path codes them) "
        "and no local-only prior.",
        f"- Test volumes (central crops of at most {CROP[0]}x{CROP[1]}x{CROP[2]}), qualities "
        f"{', '.join(map(str, QUALITIES))}. BD-rate over 35-65 dB, per volume, then averaged; negative = fewer bits.",
        "",
        "## Every prior against sending every table",
        "",
        "| prior | mean BD-rate | CT | MR | " + " | ".join(" ".join(n.split("_")[:3]) for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for arm, per in bd["vs_none"].items():
        ct = _mean(per[n] for n in names if mod[n] == "CT")
        mr = _mean(per[n] for n in names if mod[n] == "MR")
        cells = " | ".join(f"{per[n]:+.2f} %" if per[n] is not None else "-" for n in names)
        lines.append(f"| {arm} | {_mean(per.values()):+.2f} % | {ct:+.2f} % | {mr:+.2f} % | {cells} |")
    fc = bd["fed_vs_central"]
    lines += [
        "",
        "## Targets",
        "",
        "| experiment | target | measured | holds |",
        "|---|---|---|---|",
        f"| federated vs centralized (ref) | within 3 % | {_mean(fc.values()):+.3f} % | "
        f"**{'yes' if abs(_mean(fc.values())) <= 3 else 'no'}** |",
    ]
    per_site = {s: _mean(v.values()) for s, v in bd["fed_vs_local"].items()}
    better = sum(1 for v in per_site.values() if v < 0)
    overall = _mean(v for d in bd["fed_vs_local"].values() for v in d.values())
    lines.append(
        f"| federated vs the local-only models (ref), on the other sites' test volumes | federated better (< 0) | "
        f"{overall:+.2f} % over all pairs; better than {better} of {len(per_site)} sites' models | "
        f"**{'yes' if overall < 0 else 'no'}** |"
    )
    lines += ["", "| local-only model of site | BD-rate of federated against it, other sites' volumes |", "|---|---|"]
    for s, v in per_site.items():
        lines.append(f"| {s} | {v:+.2f} % |")
    lines += ["", "Prior files: " + ", ".join(f"{a}: `{Path(p).name}`" for a, p in priors.items() if a != "none"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.federated_tables", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/fed-tables"))
    p.add_argument("--no-report", action="store_true", help="measure only; leave FEDERATED_TABLES.md alone")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    priors, facts = build_priors(args.out)
    results = measure(args.out, priors)
    bd = bd_tables(results, list(priors))
    write_json(args.out / "bd.json", {"bd": bd, "facts": facts, "priors": priors})
    if not args.no_report:
        REPORT.write_text(
            report(bd, facts, priors, f"PYTHONPATH=src:. python -m benchmarks.federated_tables --out {args.out}")
        )
    print(REPORT if not args.no_report else args.out / "bd.json")


if __name__ == "__main__":
    main()
