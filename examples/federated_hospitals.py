"""Federated training across the "hospitals" of ../shared/data, with plots.

Every ``site`` of the data manifest's train split is one hospital: it trains on
its own volumes, holds its last volume back for evaluation, and sends only
parameter tensors and a few scalars to the server. The test split is never
read. At the end the run folder holds the global model file (usable as
``medcodec.compress(vol, model=PATH)``), metrics.json, and the plots: local
loss per site, PSNR and bits per voxel per round, compression ratio per site,
original vs decoded slices, and federated vs centralized vs local-only.

Usage::

    python examples/federated_hospitals.py --out runs/fed-hospitals            # the full run (hours on 2 cores)
    python examples/federated_hospitals.py --out runs/fed-hospitals --resume   # continue it after an interruption
    python examples/federated_hospitals.py --out /tmp/fed-smoke --smoke        # a 2-round proof that it runs

The same run from the command line::

    medcodec-fed run --data --rounds 40 --local-steps 50 --baselines --out runs/fed-hospitals
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medcodec.training.datasets import find_data_dir
from medcodec_fed import RunConfig, run, sites_from_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--data", help="data folder with manifest.json (default: MEDCODEC_DATA or ../shared/data)")
    p.add_argument("--arch", default="mc3d-s")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--local-steps", type=int, default=50)
    p.add_argument("--mu", type=float, default=0.0, help="FedProx weight")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="skip the centralized and local-only references")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--smoke", action="store_true", help="2 rounds x 5 steps of mc3d-xs on small crops")
    args = p.parse_args(argv)

    data = Path(args.data) if args.data else find_data_dir()
    if data is None:
        print("no data folder: set MEDCODEC_DATA or provide ../shared/data", file=sys.stderr)
        return 2
    sites = sites_from_manifest(data, split="train", group_by="site", hold_out=1)
    for s in sites:
        held = ", ".join(p.name for p in s.held_out)
        print(f"hospital {s.name}: trains on {len(s.train)} volumes, holds back {held}")
    if args.smoke:
        config = RunConfig(
            arch="mc3d-xs",
            rounds=2,
            local_steps=5,
            batch=2,
            patch=32,
            eval_crop=32,
            final_crop=48,
            calib_patches=4,
            calib_size=32,
            baselines=not args.no_baselines,
            seed=args.seed,
            threads=args.threads,
        )
    else:
        config = RunConfig(
            arch=args.arch,
            rounds=args.rounds,
            local_steps=args.local_steps,
            batch=4,
            patch=32,
            mu=args.mu,
            eval_crop=64,
            final_crop=None,
            baselines=not args.no_baselines,
            seed=args.seed,
            threads=args.threads,
        )
    result = run(sites, config, args.out, resume=args.resume)
    print(json.dumps({"model": str(result.model), "final": result.metrics["final"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
