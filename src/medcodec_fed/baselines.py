"""The two references a federated model is judged against, trained with the same budget.

* centralized: one model trained on the pooled training volumes of every site
  (what federation approximates without moving data), for as many steps as
  all sites together take in the federated run with full participation;
* local-only: each site trains alone for as many steps as it takes in the
  federated run, and is evaluated on its own held-back volumes.

Both start from the federated run's initial model and use the same local
training function, so the comparison isolates what federation changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .config import RunConfig
from .engine import initial_parameters
from .evaluate import evaluate_float
from .local import build_model, train_site
from .messages import GlobalModel
from .randomness import Purpose, derive_seed
from .sites import Site, SiteData

__all__ = ["run_baselines", "train_baseline"]


def train_baseline(config: RunConfig, data: SiteData, steps: int, seed: int, index: int) -> dict:
    """Parameters after ``steps`` local steps on ``data`` from the run's initial model: a baseline's training
    (the federated run's local-training function, seeded by the caller)."""
    init = initial_parameters(config)
    lc = replace(config.local_config(), steps=steps, epochs=None)
    update, _ = train_site(GlobalModel(config.arch, 0, init), "baseline", data, lc, seed=seed, site_index=index)
    return dict(update.parameters)


def run_baselines(
    state: dict[str, Any],
    sites: Sequence[Site],
    data: dict[str, SiteData],
    config: RunConfig,
    gain: float,
    *,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate the centralized and local-only models; per-site float metrics of each.

    Returns:
        {"rounds": R, "steps": {...}, "federated": {site: metrics}, "centralized": {site: metrics},
        "local_only": {site: metrics}}, metrics at the run's fixed quality on held-back crops.
    """
    lc = config.local_config()
    per_site = {s.name: lc.steps_for(data[s.name]) * config.rounds for s in sites}
    pooled = SiteData("pooled", [v for s in sites for v in data[s.name].train], [])
    total = sum(per_site.values())
    say(f"baseline: centralized, {total} steps on the pooled training volumes")
    seed = derive_seed(config.seed, 0, 0, Purpose.CENTRALIZED)
    central = build_model(config.arch, train_baseline(config, pooled, total, seed, 0))
    out: dict[str, Any] = {
        "rounds": config.rounds,
        "steps": {"centralized": total, "local_only": per_site},
        "centralized": {},
        "local_only": {},
    }
    for i, s in enumerate(sites):
        out["centralized"][s.name] = evaluate_float(central, data[s.name].eval_crops, gain)
        say(f"baseline: local-only {s.name}, {per_site[s.name]} steps")
        seed = derive_seed(config.seed, 0, i, Purpose.LOCAL_ONLY)
        alone = build_model(config.arch, train_baseline(config, data[s.name], per_site[s.name], seed, i))
        out["local_only"][s.name] = evaluate_float(alone, data[s.name].eval_crops, gain)
    last = state["history"][-1]["eval"] if state["history"] else {}
    out["federated"] = {n: last[n] for n in last}
    return out
