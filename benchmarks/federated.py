"""Federated-training experiments: federated vs centralized, vs local-only, and with dropout.

Trains (or, with ``--resume``, reuses) these models of one architecture on the train split
of the data manifest, one site per manifest ``site``:

* ``federated``            — FedAvg, every site every round (``medcodec_fed.run``);
* ``federated-dropout``    — the same with each site dropping out of a round with
  probability ``--dropout`` (default 0.3);
* ``centralized``          — one model on the pooled training volumes of all sites with
  the federated run's total budget (rounds x local steps x sites optimizer steps of the
  same batch and patch), trained by ``medcodec_fed.baselines`` (the library's baseline);
* ``local-only/<site>``    — each site alone, rounds x local steps steps (same baseline code).

Every model is exported to a codec model file and evaluated through the real codec
(``medcodec.compress`` / ``decompress`` with ``model=PATH``) at several qualities on a
deterministic central crop of every volume of the manifest's *test* split. BD-rate
(``benchmarks.bdrate``: log-rate vs PSNR, PCHIP, overlap within 35-65 dB) is computed per
test volume and averaged over volumes. It then writes ``--results`` (markdown) and
``OUT/results.json`` (raw numbers).

Usage::

    PYTHONPATH=src:. python -m benchmarks.federated --out runs/fed-exp [--resume]

Every stage is resumable: the federated runs through their checkpoints, the baseline
models and each codec measurement through files in ``OUT``.

This module is the command line and results.json; the work is done by
``benchmarks.federated_train`` (the models), ``benchmarks.federated_evaluate`` (coding the
test volumes), ``benchmarks.federated_analysis`` (the BD-rate comparisons) and
``benchmarks.federated_report`` (FEDERATED_RESULTS.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .federated_analysis import experiments, stream_shares
from .federated_evaluate import evaluate_all, load_test_volumes
from .federated_report import interpret, render_markdown
from .federated_train import local_training_seconds, train_baselines, train_federated
from .json_files import read_json, write_json

__all__ = ["FORMAT", "Settings", "main"]

#: results.json's ``format``.
FORMAT = "medcodec-federated-experiments/1"


@dataclass(frozen=True)
class Settings:
    """What the experiments run with (recorded in results.json)."""

    arch: str = "mc3d-xs"
    rounds: int = 30
    local_steps: int = 20
    batch: int = 4
    patch: int = 32
    lr: float = 5e-4
    dropout: float = 0.3
    seed: int = 0
    qualities: tuple[int, ...] = (20, 30, 40, 50, 60, 70, 80)
    crop: tuple[int, int, int] = (32, 256, 256)
    noise_seed: int | None = 1
    eval_crop: int = 32
    calib_patches: int = 12
    calib_size: int = 48

    def run_config(self, **changes: Any):
        """The ``medcodec_fed.RunConfig`` of a run with these settings (and ``changes``)."""
        from medcodec_fed import RunConfig

        base = dict(
            arch=self.arch,
            rounds=self.rounds,
            local_steps=self.local_steps,
            batch=self.batch,
            patch=self.patch,
            lr=self.lr,
            seed=self.seed,
            threads=1,
            eval_crop=self.eval_crop,
            final_crop=self.eval_crop,
            calib_patches=self.calib_patches,
            calib_size=self.calib_size,
            plots=False,
            export=True,
        )
        base.update(changes)
        return RunConfig(**base)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder (models, checkpoints, cache, results.json)")
    parser.add_argument("--resume", action="store_true", help="continue and reuse what earlier invocations finished")
    parser.add_argument("--data", help="data folder with manifest.json (default: MEDCODEC_DATA or ../shared/data)")
    parser.add_argument("--results", default="benchmarks/FEDERATED_RESULTS.md", help="markdown report to write")
    parser.add_argument("--arch", default=Settings.arch)
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--local-steps", type=int, default=Settings.local_steps)
    parser.add_argument("--batch", type=int, default=Settings.batch)
    parser.add_argument("--patch", type=int, default=Settings.patch)
    parser.add_argument("--dropout", type=float, default=Settings.dropout)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--qualities", default=",".join(map(str, Settings.qualities)))
    parser.add_argument(
        "--crop", default="x".join(map(str, Settings.crop)), help="central crop z x y x x of test volumes"
    )
    parser.add_argument("--eval-crop", type=int, default=Settings.eval_crop, help="per-round float evaluation crop")
    parser.add_argument("--calib-patches", type=int, default=Settings.calib_patches)
    parser.add_argument("--calib-size", type=int, default=Settings.calib_size)
    parser.add_argument(
        "--noise-seed",
        type=int,
        default=Settings.noise_seed,
        help="also train federated and centralized with this seed to measure run-to-run variation (negative: skip)",
    )
    parser.add_argument("--train-only", action="store_true", help="train the models, skip evaluation and report")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        arch=args.arch,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch=args.batch,
        patch=args.patch,
        dropout=args.dropout,
        seed=args.seed,
        qualities=tuple(int(quality) for quality in args.qualities.split(",")),
        crop=tuple(int(side) for side in args.crop.lower().split("x")),
        eval_crop=args.eval_crop,
        calib_patches=args.calib_patches,
        calib_size=args.calib_size,
        noise_seed=None if args.noise_seed is None or args.noise_seed < 0 else args.noise_seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from medcodec.training.datasets import find_data_dir, load_manifest
    from medcodec_fed import sites_from_manifest

    started = time.perf_counter()
    data_dir = Path(args.data) if args.data else find_data_dir()
    if data_dir is None:
        print("no data folder: set MEDCODEC_DATA or provide ../shared/data", file=sys.stderr)
        return 2
    settings = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.txt"

    def say(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as log:
            log.write(line + "\n")

    invocations_path = out / "invocations.json"
    invocations = read_json(invocations_path, []) if args.resume else []
    invocations.append(
        "PYTHONPATH=src:. python -m benchmarks.federated " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    write_json(invocations_path, invocations)

    sites = sites_from_manifest(data_dir, split="train", group_by="site", hold_out=1)
    for site in sites:
        held_back = ", ".join(volume.name for volume in site.held_out) or "slices"
        say(f"site {site.name}: trains on {len(site.train)} volumes, holds back {held_back}")
    federated_config = settings.run_config()
    dropout_config = settings.run_config(dropout=settings.dropout)
    federated = train_federated(sites, federated_config, out / "federated", resume=args.resume, say=say)
    dropout = train_federated(sites, dropout_config, out / "federated-dropout", resume=args.resume, say=say)
    baselines = train_baselines(sites, federated_config, out / "baselines", say=say)
    models = {"federated": federated["model"], "federated-dropout": dropout["model"]}
    models |= {name: info["model"] for name, info in baselines.items()}
    if settings.noise_seed is not None:  # the same two trainings with another seed: run-to-run variation
        second_seed = settings.noise_seed
        second_config = settings.run_config(seed=second_seed)
        federated_b = train_federated(
            sites, second_config, out / f"federated-seed{second_seed}", resume=args.resume, say=say
        )
        baselines_b = train_baselines(
            sites, second_config, out / f"baselines-seed{second_seed}", say=say, local_only=False
        )
        models |= {"federated-seed-b": federated_b["model"], "centralized-seed-b": baselines_b["centralized"]["model"]}
    if args.train_only:
        return 0

    test_volumes = load_test_volumes(load_manifest(data_dir, split="test"), settings.crop)
    points = evaluate_all(models, test_volumes, settings.qualities, out / "codec_cache.json", say=say)
    comparisons = experiments(points, test_volumes, [site.name for site in sites])
    shares = stream_shares(points)

    json_path = out / "results.json"
    doc = {
        "format": FORMAT,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "json": str(json_path),
        "commands": invocations,
        "settings": {
            key: (list(value) if isinstance(value, tuple) else value) for key, value in vars(settings).items()
        },
        "sites": {site.name: len(site.train) for site in sites},
        "budget": {
            "federated_site_steps": federated["site_steps"],
            "centralized_steps": baselines["centralized"]["steps"],
            "local_only_steps": {
                name.split("/", 1)[1]: info["steps"]
                for name, info in baselines.items()
                if name.startswith("local-only/")
            },
            "dropout_site_steps": dropout["site_steps"],
            "dropout_site_rounds_dropped": dropout["site_rounds_dropped"],
        },
        "models": models,
        "test_volumes": {
            name: {key: value for key, value in info.items() if key != "volume"} for name, info in test_volumes.items()
        },
        "points": points,
        "experiments": comparisons,
        "stream_shares": shares,
        "interpretation": interpret(comparisons, shares, points),
        "timing": {
            "training_seconds": {
                "federated (local training only)": local_training_seconds(out / "federated"),
                "federated-dropout (local training only)": local_training_seconds(out / "federated-dropout"),
                **{name: info.get("seconds") for name, info in baselines.items()},
            },
            "codec_points": sum(len(by_quality) for by_volume in points.values() for by_quality in by_volume.values()),
            "codec_seconds": sum(
                point["seconds"]
                for by_volume in points.values()
                for by_quality in by_volume.values()
                for point in by_quality.values()
            ),
            "last_invocation_wall_seconds": time.perf_counter() - started,
        },
    }
    write_json(json_path, doc)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(render_markdown(doc), encoding="utf-8")
    say(f"wrote {args.results} and {json_path}")
    for name, comparison in comparisons.items():
        if "holds" not in comparison:
            continue
        say(
            f"{name}: mean {comparison.get('mean', comparison.get('mean_over_all_pairs'))}  holds {comparison['holds']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
