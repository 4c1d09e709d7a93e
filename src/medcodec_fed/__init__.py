"""medcodec_fed: federated training of medcodec models without moving voxels between sites.

Quick start::

    from medcodec_fed import RunConfig, Site, run
    sites = [Site.from_folder("a", "/data/a"), Site.from_folder("b", "/data/b")]
    result = run(sites, RunConfig(arch="mc3d-xs", rounds=5, local_steps=20), "runs/fed")
    medcodec.compress(volume, model=str(result.model))

The core (messages, local training, aggregation) is framework-free: the
in-process engine of :mod:`medcodec_fed.engine` and a Flower ServerApp/ClientApp
drive the same functions. Names are imported on first use so that
``medcodec-fed --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Aggregate",
    "GlobalModel",
    "LocalConfig",
    "MessageError",
    "Rejection",
    "RunConfig",
    "RunResult",
    "Site",
    "SiteData",
    "SiteEvaluation",
    "SiteUpdate",
    "aggregate",
    "dirichlet_partition",
    "evaluate_site",
    "fedavg",
    "load_site",
    "median",
    "run",
    "sites_from_manifest",
    "split_collection",
    "train_site",
    "trimmed_mean",
]

_HOME = {
    "Aggregate": "aggregate",
    "Rejection": "aggregate",
    "aggregate": "aggregate",
    "fedavg": "aggregate",
    "median": "aggregate",
    "trimmed_mean": "aggregate",
    "GlobalModel": "messages",
    "SiteUpdate": "messages",
    "SiteEvaluation": "messages",
    "MessageError": "messages",
    "LocalConfig": "local",
    "train_site": "local",
    "evaluate_site": "local",
    "RunConfig": "config",
    "RunResult": "engine",
    "run": "engine",
    "Site": "sites",
    "SiteData": "sites",
    "load_site": "sites",
    "sites_from_manifest": "sites",
    "split_collection": "sites",
    "dirichlet_partition": "sites",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
