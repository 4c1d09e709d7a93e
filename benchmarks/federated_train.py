"""The models of the federated experiments: federated runs, centralized and local-only baselines.

* :func:`train_federated` runs (or reuses) one FedAvg run of ``medcodec_fed.run``, whose
  checkpoints make it resumable;
* :func:`train_baselines` trains the centralized and local-only models with the federated
  run's budget (``medcodec_fed.baselines``) and exports them to codec model files, recorded
  in the run folder so that later invocations reuse them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .json_files import read_json, write_json

__all__ = ["local_training_seconds", "train_baselines", "train_federated"]

Say = Callable[[str], None]


def train_federated(sites, config, out: Path, *, resume: bool, say: Say) -> dict[str, Any]:
    """Run (or reuse) one federated run; returns its model path and metrics summary."""
    from medcodec_fed import run

    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        finished = len(metrics.get("rounds", [])) == config.rounds
        if metrics.get("model") and finished and (out / metrics["model"]).exists():
            if metrics.get("config") == config.to_dict():
                say(f"reusing {out / metrics['model']}")
                return _federated_summary(metrics, out)
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    result = run(sites, config, out, resume=resume, say=say)
    summary = _federated_summary(result.metrics, out)
    summary["seconds_this_invocation"] = time.perf_counter() - wall_start
    summary["cpu_seconds_this_invocation"] = time.process_time() - cpu_start
    return summary


def _federated_summary(metrics: dict[str, Any], out: Path) -> dict[str, Any]:
    rounds = metrics["rounds"]
    return {
        "model": str(out / metrics["model"]),
        "rounds": len(rounds),
        "site_steps": sum(int(site["steps"]) for one_round in rounds for site in one_round["train"].values()),
        "site_rounds_dropped": sum(len(one_round["dropped"]) for one_round in rounds),
        "round_seconds": sum(one_round["seconds"] for one_round in rounds),
        "last_round_eval_mean": rounds[-1]["global"],
    }


def local_training_seconds(run_folder: Path) -> float | None:
    """Seconds the sites of a federated run spent in local training, from its metrics.json
    (None before the run has written one)."""
    metrics_path = run_folder / "metrics.json"
    if not metrics_path.exists():
        return None
    rounds = json.loads(metrics_path.read_text())["rounds"]
    return sum(float(site.get("seconds", 0.0)) for one_round in rounds for site in one_round["train"].values())


def train_baselines(sites, config, out: Path, *, say: Say, local_only: bool = True) -> dict[str, Any]:
    """Centralized and local-only models with the federated budget, exported to model files.

    Training is ``medcodec_fed.baselines``'s (same initial model, same local-training
    function, same seeds as ``run_baselines``); this adds the export so the models go
    through the real codec. Each finished model is recorded in ``out/models.json`` and
    reused by later invocations.
    """
    from medcodec.training.export import export_model
    from medcodec_fed.baselines import train_baseline
    from medcodec_fed.local import build_model, calibrate_site
    from medcodec_fed.messages import GlobalModel
    from medcodec_fed.model_files import combine_calibrations, model_meta
    from medcodec_fed.randomness import Purpose, derive_seed
    from medcodec_fed.sites import SiteData, load_site

    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "models.json"
    record = read_json(record_path, {})
    config_key = json.dumps(config.to_dict(), sort_keys=True)
    if record.get("config") != config_key:
        record = {"config": config_key, "models": {}}
    wanted = ["centralized"] + ([f"local-only/{site.name}" for site in sites] if local_only else [])
    if all(name in record["models"] and Path(record["models"][name]["model"]).exists() for name in wanted):
        say("reusing the baseline models")
        return record["models"]

    import torch

    torch.set_num_threads(config.threads)
    site_data = {site.name: load_site(site, eval_crop=config.eval_crop) for site in sites}
    local_training = config.local_config()
    steps_per_site = {site.name: local_training.steps_for(site_data[site.name]) * config.rounds for site in sites}

    def calibrate(params, site_index: int, site_name: str):
        return calibrate_site(
            GlobalModel(config.arch, 0, params),
            site_name,
            site_data[site_name],
            patches=config.calib_patches,
            size=config.calib_size,
            seed=config.seed,
            site_index=site_index,
        )

    def export_and_record(name: str, params, activation_max, steps: int, seconds: float, cpu: float, meta) -> None:
        model = build_model(config.arch, params)
        path = export_model(model, out / name, activation_max=activation_max, meta=meta)
        record["models"][name] = {"model": str(path), "steps": steps, "seconds": seconds, "cpu_seconds": cpu}
        write_json(record_path, record)
        say(f"{name}: {steps} steps, {seconds:.0f} s -> {path}")

    if "centralized" not in record["models"]:
        total_steps = sum(steps_per_site.values())
        pooled = SiteData("pooled", [volume for site in sites for volume in site_data[site.name].train], [])
        say(f"centralized: {total_steps} steps on the pooled training volumes of {len(sites)} sites")
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        seed = derive_seed(config.seed, 0, 0, Purpose.CENTRALIZED)
        params = train_baseline(config, pooled, total_steps, seed, 0)
        # exported like the federated model: element-wise maximum of every site's activation ranges
        calibrations = [calibrate(params, index, site.name) for index, site in enumerate(sites)]
        activation_max = combine_calibrations(calibrations, config.arch)
        meta = {"trained_on": "centralized: " + ", ".join(site.name for site in sites), "baseline": "centralized"}
        seconds, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
        export_and_record("centralized", params, activation_max, total_steps, seconds, cpu, meta)
    for index, site in enumerate(sites if local_only else []):
        name = f"local-only/{site.name}"
        if name in record["models"]:
            continue
        steps = steps_per_site[site.name]
        say(f"{name}: {steps} steps on its own training volumes")
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        seed = derive_seed(config.seed, 0, index, Purpose.LOCAL_ONLY)
        params = train_baseline(config, site_data[site.name], steps, seed, index)
        activation_max = list(calibrate(params, index, site.name).activation_max)  # its own data only
        meta = model_meta(config, [site.name]) | {"trained_on": f"local-only: {site.name}", "baseline": "local-only"}
        seconds, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
        export_and_record(name, params, activation_max, steps, seconds, cpu, meta)
    return record["models"]
