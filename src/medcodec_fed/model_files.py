"""Turning a federated run's parameters into codec model files.

The global model becomes one ``.mcw`` file in the run folder through
``medcodec.training.export.export_model``, the same conversion the shipped model goes
through, so ``medcodec.compress(..., model=path)`` and ``decompress`` use it
and it is named by its content hash. With personalization, every site also gets
its own file in ``sites/<name>/`` (shared parameters + its own local ones).

Export needs the range of every hidden synthesis layer's activations. No voxel
leaves a site for it: each site measures the ranges of the global model on
patches of its own training volumes (:func:`~medcodec_fed.local.calibrate_site`)
and sends a :class:`~medcodec_fed.messages.SiteCalibration` of scalars; the
server exports with their element-wise maximum (:func:`combine_calibrations`),
so the integer network covers every site's activations. A site's own model is
calibrated on its own data only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import RunConfig
from .local import build_model, calibrate_site
from .messages import GlobalModel, MessageError, SiteCalibration
from .sites import Site, SiteData

__all__ = ["combine_calibrations", "export_run_models", "model_meta"]


def model_meta(
    config: RunConfig,
    sites: Sequence[Site] | Sequence[str],
    *,
    site: str | None = None,
    engine: str = "medcodec_fed in-process",
) -> dict[str, Any]:
    """Metadata recorded in the model file (deterministic: no times, no paths)."""
    names = [s if isinstance(s, str) else s.name for s in sites]
    fed = {
        "engine": engine,
        "sites": names,
        "rounds": config.rounds,
        "local_steps": config.local_steps if config.local_epochs is None else None,
        "local_epochs": config.local_epochs,
        "aggregation": config.aggregation,
        "mu": config.mu,
        "fraction": config.fraction,
        "dropout": config.dropout,
        "local_groups": list(config.local_groups),
        "seed": config.seed,
        "calibration": "element-wise maximum of the sites' activation ranges",
    }
    trained_on = "federated: " + ", ".join(names)
    if config.drill():  # a rehearsal's model must never pass for a real one
        fed["drill"] = config.drill()
        trained_on = "fault drill, " + trained_on
    meta: dict[str, Any] = {"trained_on": trained_on, "federated": fed}
    if site is not None:
        meta["personalized_for"] = site
    return meta


def combine_calibrations(calibrations: Sequence[SiteCalibration], arch: str) -> list[float]:
    """Element-wise maximum of the sites' activation ranges (what the global export uses).

    Raises:
        MessageError: No calibration, or one of another architecture.
    """
    if not calibrations:
        raise MessageError("no site sent activation ranges: the model cannot be exported")
    for c in calibrations:
        if c.arch != arch:
            raise MessageError(f"site {c.site!r} calibrated architecture {c.arch!r}, expected {arch!r}")
    return [max(values) for values in zip(*(c.activation_max for c in calibrations))]


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
    from medcodec.training.export import export_model

    params = state["parameters"]
    global_model = GlobalModel(config.arch, 0, params)
    calibrations = [  # each at its site, on its own training volumes
        calibrate_site(
            global_model,
            s.name,
            data[s.name],
            patches=config.calib_patches,
            size=config.calib_size,
            seed=config.seed,
            site_index=i,
        )
        for i, s in enumerate(sites)
    ]
    model = build_model(config.arch, params)
    act_max = combine_calibrations(calibrations, config.arch)
    path = export_model(model, out, activation_max=act_max, meta=model_meta(config, sites))
    site_models = {}
    if len(shared_names) < len(params):
        shared = GlobalModel(config.arch, 0, {k: params[k] for k in shared_names})
        for i, s in enumerate(sites):
            local = state["local"][s.name]
            own = calibrate_site(
                shared,
                s.name,
                data[s.name],
                patches=config.calib_patches,
                size=config.calib_size,
                seed=config.seed,
                site_index=i,
                local_state=local,
            )
            meta = model_meta(config, sites, site=s.name)
            site_models[s.name] = export_model(
                build_model(config.arch, shared.parameters, local),
                out / "sites" / s.name,
                activation_max=list(own.activation_max),
                meta=meta,
            )
    return path, site_models
