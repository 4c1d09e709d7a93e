"""Turning a federated run's parameters into codec model files.

The global model becomes one ``.mcw`` file in the run folder through
``medcodec.export.export_model``, the same conversion the shipped model goes
through, so ``medcodec.compress(..., model=path)`` and ``decompress`` use it
and it is named by its content hash. With personalization, every site also gets
its own file in ``sites/<name>/`` (shared parameters + its own local ones).

Export needs calibration patches to measure activation ranges. The global
model's are drawn from every site's training volumes: export is the one step of
the in-process engine that reads voxels outside local training, and it runs
where the data already are. A site's own model is calibrated on its own data only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .local import build_model
from .randomness import Purpose, derive_seed
from .sites import Site, SiteData

__all__ = ["export_run_models", "model_meta"]


def model_meta(config: RunConfig, sites: Sequence[Site], *, site: str | None = None) -> dict[str, Any]:
    """Metadata recorded in the model file (deterministic: no times, no paths)."""
    fed = {
        "engine": "medcodec_fed in-process",
        "sites": [s.name for s in sites],
        "rounds": config.rounds,
        "local_steps": config.local_steps if config.local_epochs is None else None,
        "local_epochs": config.local_epochs,
        "aggregation": config.aggregation,
        "mu": config.mu,
        "fraction": config.fraction,
        "dropout": config.dropout,
        "local_groups": list(config.local_groups),
        "seed": config.seed,
    }
    meta: dict[str, Any] = {"trained_on": "federated: " + ", ".join(s.name for s in sites), "federated": fed}
    if site is not None:
        meta["personalized_for"] = site
    return meta


def _calibration(volumes: list[np.ndarray], config: RunConfig, index: int) -> list[np.ndarray]:
    from medcodec.export import calibration_patches

    seed = derive_seed(config.seed, 0, index, Purpose.CALIBRATE)
    return calibration_patches(volumes, count=config.calib_patches, size=config.calib_size, seed=seed)


def export_run_models(
    state: dict[str, Any],
    sites: Sequence[Site],
    data: dict[str, SiteData],
    config: RunConfig,
    out: Path,
    shared_names: list[str],
) -> tuple[Path, dict[str, Path]]:
    """Write the global model file (and each site's, with personalization).

    Returns:
        (global model path, site name -> site model path).
    """
    from medcodec.export import export_model

    params = state["parameters"]
    pooled = [v for s in sites for v in data[s.name].train]
    model = build_model(config.arch, params)
    path = export_model(model, out, _calibration(pooled, config, 0), meta=model_meta(config, sites))
    site_models = {}
    if len(shared_names) < len(params):
        shared = {k: params[k] for k in shared_names}
        for i, s in enumerate(sites):
            own = build_model(config.arch, shared, state["local"][s.name])
            calib = _calibration(data[s.name].train, config, i + 1)
            meta = model_meta(config, sites, site=s.name)
            site_models[s.name] = export_model(own, out / "sites" / s.name, calib, meta=meta)
    return path, site_models
