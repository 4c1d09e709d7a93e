"""``medcodec-fed``: federated training of medcodec models from the command line.

Examples::

    medcodec-fed run --site a=/data/a --site b=/data/b --rounds 20 --local-steps 50 --seed 0 --out runs/fed
    medcodec-fed run --data ../shared/data --rounds 20 --out runs/hospitals   # manifest sites as hospitals
    medcodec-fed run --config run.toml                                         # settings from a TOML file
    medcodec-fed run --config run.toml --resume                                # continue an interrupted run
    medcodec-fed run --engine flower --site a=/data/a --site b=/data/b --out runs/flower   # Flower simulation
    medcodec-fed flower-app app/ --arch mc3d-s --rounds 20 --out /srv/runs/fed   # Flower app for `flwr run`
    medcodec-fed plot runs/fed                                                 # redraw plots from metrics.json
    medcodec-fed tables --data ../shared/data --out runs/fed-tables           # the table prior, every site counts
    medcodec-fed tables --engine flower --site a=/data/a --site b=/data/b --out runs/tables   # ... in Flower
    medcodec-fed tables-app app/ --out /srv/runs/tables --min-sites 3         # Flower app of that job

Settings given on the command line override the TOML file's. The engine is a choice,
not code: ``--engine in-process`` (default) runs every site in this process;
``--engine flower`` runs the same sites in Flower's simulation engine (``medcodec[flower]``),
with SecAgg+ on by default. Real deployments (one SuperLink, one SuperNode per site) submit
the app folder written by ``flower-app`` with ``flwr run``: see docs/DEPLOY.md.
An error prints one line, ``medcodec-fed: error: <message>``. Exit codes: 0 done; 2 bad
arguments or settings (a wrongly typed TOML value, a refused ``--init`` checkpoint);
8 a site's volume that cannot be read (the other errors of medcodec exit with the code
``medcodec --help`` lists for them); 130 interrupted; 1 any other error. A run that fails
before writing anything leaves no ``--out`` folder behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["main"]

# RunConfig fields whose options do not map one to one (NAME=VALUE lists, groups of names).
_SPECIAL = frozenset({"site_dropout", "drill_hostile", "local_groups"})


def _settings() -> tuple[str, ...]:
    """RunConfig fields that are options of the same name (--local-steps -> local_steps)."""
    from dataclasses import fields

    from .config import RunConfig

    return tuple(f.name for f in fields(RunConfig) if f.name not in _SPECIAL)


# Options that choose sites and the run folder rather than training, with the types a TOML
# file must give them (the command line's parser converts its own).
_OTHER = ("out", "data", "partition", "num_sites", "alpha", "hold_out")
_OTHER_TYPES = {"out": str, "data": str, "partition": str, "num_sites": int, "alpha": (int, float), "hold_out": int}

# CLI option -> medcodec_fed.flower.FlowerOptions field (TOML: a [flower] table with these keys).
_FLOWER = ("secagg", "dp", "dp_noise_multiplier", "dp_clipping_norm", "min_fit_clients", "min_available_clients")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medcodec-fed",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run or resume a federated training")
    r.add_argument("--config", metavar="TOML", help="settings file (top-level keys as below, [sites] name = folder)")
    r.add_argument("--out", help="run folder (checkpoint.pt, metrics.json, model file, plots)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument(
        "--engine",
        choices=("in-process", "flower"),
        default="in-process",
        help="in-process (default): every site in this process; flower: Flower's simulation",
    )
    g = r.add_argument_group("sites")
    g.add_argument("--site", action="append", metavar="NAME=DIR", help="a site and its folder of volumes (repeat)")
    g.add_argument(
        "--data",
        metavar="DIR",
        nargs="?",
        const="",
        help="sites from the data manifest's train split (default folder: MEDCODEC_DATA or ../shared/data)",
    )
    g.add_argument(
        "--partition", choices=("site", "modality", "dirichlet"), help="how --data is split into sites (default: site)"
    )
    g.add_argument("--num-sites", type=int, help="sites of a Dirichlet partition")
    g.add_argument("--alpha", type=float, help="Dirichlet concentration (small: more non-IID; default 0.5)")
    g.add_argument("--hold-out", type=int, help="volumes each site holds back for evaluation (default 1)")
    _add_settings(r)
    _add_flower_options(r)
    fa = sub.add_parser(
        "flower-app",
        help="write the Flower app folder that `flwr run` submits to a SuperLink (deployment engine)",
        description="Write DIR/pyproject.toml: a Flower app whose components are medcodec_fed.flower's "
        "ServerApp and ClientApp, with these settings as its run config. Submit it with "
        "`flwr run DIR CONNECTION` (see docs/DEPLOY.md).",
    )
    fa.add_argument("dir", help="folder to write (created if needed)")
    fa.add_argument("--config", metavar="TOML", help="settings file (as for run; its [sites] are ignored)")
    fa.add_argument("--out", help="run folder on the coordinator, where the ServerApp writes the model and metrics")
    _add_settings(fa)
    _add_flower_options(fa)
    t = sub.add_parser(
        "tables",
        help="train the transform coder's table prior: every site counts its volumes, the server sums",
        description="Each site codes its volumes without a prior and counts the frequency tables the "
        "streams send (kept in OUT/sites/NAME, so a rerun counts only new volumes); the server sums "
        "the counts and writes the prior file (tables-<hash>.mct) to --out. Use it with "
        "`medcodec compress --tables FILE` or medcodec.compress(..., tables=FILE).",
    )
    t.add_argument("--out", required=True, help="folder for the prior file (and, in process, the sites' counts)")
    t.add_argument(
        "--engine",
        choices=("in-process", "flower"),
        default="in-process",
        help="in-process (default): every site in this process; flower: Flower's simulation",
    )
    tg = t.add_argument_group("sites")
    tg.add_argument("--site", action="append", metavar="NAME=DIR", help="a site and its folder of volumes (repeat)")
    tg.add_argument(
        "--data",
        metavar="DIR",
        nargs="?",
        const="",
        help="sites from the data manifest's train split, one per site (default folder: MEDCODEC_DATA or ../shared/data)",
    )
    ta = sub.add_parser(
        "tables-app",
        help="write the Flower app folder of the table prior job (deployment engine)",
        description="Write DIR/pyproject.toml: a Flower app whose components are medcodec_fed.flower's "
        "tables_server_app and tables_client_app. Each SuperNode counts the volumes of its "
        "--node-config data-dir (kept in work-dir, default ~/.cache/medcodec-fed/tables/SITE).",
    )
    ta.add_argument("dir", help="folder to write (created if needed)")
    ta.add_argument("--out", required=True, help="folder on the coordinator where the ServerApp writes the prior file")
    ta.add_argument("--min-sites", type=int, default=2, help="sites that must send counts (default 2)")
    ta.add_argument("--timeout", type=float, default=0, help="seconds to wait for them (default 0: no limit)")
    pl = sub.add_parser("plot", help="redraw the plots of a run folder from its metrics.json")
    pl.add_argument("out")
    return p


def _add_settings(r: argparse.ArgumentParser) -> None:
    t = r.add_argument_group("training")
    t.add_argument("--arch", help="architecture (default mc3d-s)")
    t.add_argument("--rounds", type=int)
    t.add_argument("--local-steps", type=int)
    t.add_argument("--local-epochs", type=float, help="passes over a site's voxels per round instead of --local-steps")
    t.add_argument("--batch", type=int)
    t.add_argument("--patch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--mu", type=float, help="FedProx proximal weight (0: FedAvg)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--init", metavar="CKPT", help="start from a checkpoint or state dict")
    a = r.add_argument_group("aggregation")
    a.add_argument("--fraction", type=float, help="fraction of sites sampled per round")
    a.add_argument("--dropout", type=float, help="probability a sampled site drops out of a round")
    a.add_argument("--site-dropout", action="append", metavar="NAME=P", help="per-site dropout probability (repeat)")
    a.add_argument("--aggregation", choices=("fedavg", "median", "trimmed-mean"))
    a.add_argument("--trim", type=float, help="fraction trimmed at each end by trimmed-mean")
    a.add_argument(
        "--max-samples", type=int, help="largest sample count a site is weighted with (default: local-steps x batch)"
    )
    a.add_argument(
        "--local-group",
        action="append",
        metavar="PATTERN",
        help="parameters that stay at each site, e.g. 'prior.*' (repeat)",
    )
    from .config import DRILL_KINDS  # the standard library only: --help stays instant

    d = r.add_argument_group("fault drill (a rehearsal of the defences, never a real run)")
    d.add_argument(
        "--drill-hostile",
        action="append",
        metavar="NAME=KIND",
        help=f"site NAME sends a hostile update of KIND ({', '.join(DRILL_KINDS)}) every round; "
        "recorded in metrics.json and the model file (repeat)",
    )
    e = r.add_argument_group("evaluation and output")
    e.add_argument("--quality", type=int, help="fixed quality of every evaluation (default 50)")
    e.add_argument("--eval-crop", type=int, help="crop side of the per-round evaluation (default 64)")
    e.add_argument("--final-crop", type=int, help="crop side of the final codec evaluation (default: whole volumes)")
    e.add_argument("--calib-patches", type=int)
    e.add_argument("--calib-size", type=int)
    e.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train centralized and local-only models for comparison",
    )
    e.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None)
    e.add_argument("--export", action=argparse.BooleanOptionalAction, default=None, help="write the codec model file")


def _add_flower_options(r: argparse.ArgumentParser) -> None:
    f = r.add_argument_group("Flower engine (TOML: a [flower] table)")
    f.add_argument(
        "--secagg",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="secure aggregation with SecAgg+: the server sees only the sum (default: on)",
    )
    f.add_argument(
        "--dp",
        choices=("off", "client", "server"),
        help="central DP: client-side clipping (works with SecAgg+) or server-side",
    )
    f.add_argument("--dp-noise-multiplier", type=float)
    f.add_argument("--dp-clipping-norm", type=float, help="L2 bound of each site's update")
    f.add_argument("--min-fit-clients", type=int, help="sites needed to train a round (default 2)")
    f.add_argument("--min-available-clients", type=int, help="sites connected before a round starts (default 2)")


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} must look like NAME=VALUE, got {item!r}")
        if name in out:
            raise ValueError(f"{what} {name!r} given twice")
        out[name] = value
    return out


def _gather(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], dict[str, Any], dict[str, Any]]:
    """(RunConfig settings, site folders, other options, Flower options), TOML first, command line over it."""
    settings: dict[str, Any] = {}
    sites: dict[str, str] = {}
    flower: dict[str, Any] = {}
    if args.config:
        from dataclasses import fields

        from .config import RunConfig, load_toml

        doc, sites = load_toml(args.config)
        table = doc.pop("flower", {})
        if not isinstance(table, dict):
            raise ValueError(f"{args.config}: [flower] must be a table")
        flower = {k.replace("-", "_"): v for k, v in table.items()}
        known = {f.name for f in fields(RunConfig)} | set(_OTHER)
        for key in doc:
            if key.replace("-", "_") not in known:
                raise ValueError(f"{args.config}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        settings = {k.replace("-", "_"): v for k, v in doc.items()}
    other = {k: settings.pop(k) for k in _OTHER if k in settings}
    for key, value in other.items():
        if not isinstance(value, _OTHER_TYPES[key]) or isinstance(value, bool):
            raise ValueError(f"{args.config}: {key.replace('_', '-')} has the wrong type: {value!r}")
    for name in _settings():
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.site_dropout:
        settings["site_dropout"] = {k: float(v) for k, v in _pairs(args.site_dropout, "--site-dropout").items()}
    if args.drill_hostile:
        settings["drill_hostile"] = _pairs(args.drill_hostile, "--drill-hostile")
    if args.local_group:
        settings["local_groups"] = args.local_group
    if getattr(args, "site", None):
        sites = _pairs(args.site, "--site")
    for name in _OTHER:
        if getattr(args, name, None) is not None:
            other[name] = getattr(args, name)
    for name in _FLOWER:
        if getattr(args, name, None) is not None:
            flower[name] = getattr(args, name)
    return settings, sites, other, flower


def _sites(folders: dict[str, str], other: dict[str, Any], seed: int) -> list:
    from .sites import Site, sites_from_manifest, split_collection

    hold_out = int(other.get("hold_out", 1))
    if folders and "data" in other:
        raise ValueError("--site and --data are mutually exclusive: give one of them")
    if folders:
        return [Site.from_folder(name, folder, hold_out=hold_out) for name, folder in folders.items()]
    if "data" not in other:
        raise ValueError("no sites: give --site NAME=DIR (repeat) or --data [DIR]")
    data_dir = other["data"] or None
    partition = other.get("partition", "site")
    if partition in ("site", "modality"):
        return sites_from_manifest(data_dir, group_by=partition, hold_out=hold_out)
    from medcodec.training.datasets import load_manifest

    if "num_sites" not in other:
        raise ValueError("--partition dirichlet needs --num-sites")
    entries = load_manifest(Path(data_dir) if data_dir else None, split="train")
    return split_collection(
        [e.path for e in entries],
        [e.site for e in entries],
        int(other["num_sites"]),
        alpha=float(other.get("alpha", 0.5)),
        seed=seed,
        hold_out=hold_out,
    )


def _run(args: argparse.Namespace) -> int:
    from .config import RunConfig

    settings, folders, other, flower_opts = _gather(args)
    if "out" not in other:
        raise ValueError("--out is required (or out = ... in the TOML file)")
    config = RunConfig.from_mapping(settings)
    given = ["--" + n.replace("_", "-") for n in _FLOWER if getattr(args, n, None) is not None]
    if args.engine == "in-process" and given:  # a TOML [flower] table is simply not used in process
        raise ValueError(f"{', '.join(given)}: Flower options need --engine flower")
    sites = _sites(folders, other, config.seed)
    print(
        f"{len(sites)} sites: "
        + ", ".join(f"{s.name} ({len(s.train)} train, {len(s.held_out) or 'last slices'} held out)" for s in sites),
        flush=True,
    )
    say = partial(print, flush=True)
    out = Path(other["out"])
    created = not out.exists()
    try:
        if args.engine == "flower":
            flower = _flower_module()
            if args.resume:
                raise ValueError("--resume: the Flower engine does not resume runs")
            options = flower.FlowerOptions(out=str(other["out"]), **flower_opts)
            try:
                result = flower.run_simulation(sites, config, options, say=say)
            except ImportError as exc:
                raise ValueError(str(exc)) from exc
        else:
            from .engine import run

            result = run(sites, config, other["out"], resume=args.resume, say=say)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder
        raise
    print(f"metrics: {Path(result.out) / 'metrics.json'}")
    return 0


def _flower_module():
    try:
        from . import flower
    except ImportError as exc:
        raise ValueError(f"the Flower engine needs Flower: pip install 'medcodec[flower]' ({exc})") from exc
    return flower


def _flower_app(args: argparse.Namespace) -> int:
    from .config import RunConfig

    settings, _, other, flower_opts = _gather(args)
    flower = _flower_module()
    options = flower.FlowerOptions(**({"out": str(other["out"])} if "out" in other else {}), **flower_opts)
    path = flower.write_app(args.dir, RunConfig.from_mapping(settings), options)
    print(path)
    if not Path(options.out).is_absolute():
        note = (
            f"note: the run folder {options.out!r} is relative to the ServerApp's working directory on the "
            "coordinator; give an absolute --out (or --run-config \"out='/path'\" to flwr run)"
        )
        print(note, file=sys.stderr)
    print(f"submit it with: flwr run {args.dir} <connection>   (run folder on the coordinator: {options.out})")
    return 0


def _tables(args: argparse.Namespace) -> int:
    folders = _pairs(args.site, "--site")
    other = {"hold_out": 0, **({"data": args.data} if args.data is not None else {})}
    sites = _sites(folders, other, 0)
    print(f"{len(sites)} sites: " + ", ".join(f"{s.name} ({len(s.train)} volumes)" for s in sites), flush=True)
    say = partial(print, flush=True)
    if args.engine == "flower":
        flower = _flower_module()
        try:
            path = flower.run_tables_simulation(sites, args.out, say=say)
        except ImportError as exc:
            raise ValueError(str(exc)) from exc
    else:
        from .tables import federate_tables

        path = federate_tables(sites, args.out)
    print(f"prior: {path}")
    return 0


def _tables_app(args: argparse.Namespace) -> int:
    flower = _flower_module()
    path = flower.write_tables_app(args.dir, args.out, min_sites=args.min_sites, timeout=args.timeout)
    print(path)
    print(f"submit it with: flwr run {args.dir} <connection>   (prior written on the coordinator to: {args.out})")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plots import draw_all

    out = Path(args.out)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for p in draw_all(metrics, out):
        print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medcodec-fed`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medcodec-fed: %(message)s")
    from medcodec.errors import MedcodecError

    try:
        return {"run": _run, "flower-app": _flower_app, "tables": _tables, "tables-app": _tables_app, "plot": _plot}[
            args.command
        ](args)
    except MedcodecError as exc:  # an unreadable volume, a refused checkpoint: medcodec's own exit codes
        print(f"medcodec-fed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"medcodec-fed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medcodec-fed: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
