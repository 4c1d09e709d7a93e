"""What a site runs: local training from the global model, local evaluation and calibration.

The functions take a :class:`~medcodec_fed.messages.GlobalModel` and the
site's own data and return messages, so an in-process loop and a Flower
ClientApp can call them the same way. Local training reuses
:mod:`medcodec.training.train` (patch sampling, latent gains, rate-distortion loss,
optimizer); a fresh Adam state starts every round, so a site keeps nothing
between rounds except its personalized parameters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch

from medcodec.model.network import ARCHITECTURES, Autoencoder
from medcodec.training.train import PatchSampler, make_optimizer, rd_loss, sample_gains

from .config import LocalConfig
from .evaluate import evaluate_float
from .messages import GlobalModel, SiteCalibration, SiteEvaluation, SiteUpdate
from .randomness import Purpose, derive_seed
from .sites import SiteData

__all__ = [
    "LocalConfig",
    "build_model",
    "calibrate_site",
    "drill_update",
    "evaluate_site",
    "model_arrays",
    "proximal_term",
    "train_site",
]


def build_model(arch: str, *parts: Mapping[str, np.ndarray]) -> Autoencoder:
    """An :class:`Autoencoder` holding the union of ``parts`` (which must cover every parameter).

    Raises:
        ValueError: Some parameter is in no part.
    """
    with torch.random.fork_rng():  # initial values are overwritten; keep the caller's RNG stream
        model = Autoencoder(ARCHITECTURES[arch])
    state = {}
    for part in parts:
        state.update({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in part.items()})
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"no values for parameters {sorted(missing)}")
    model.load_state_dict(state)
    return model


def model_arrays(model: torch.nn.Module, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Copies of the model's parameters (all, or ``names``) as float32 arrays."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in (names or list(state))}


def proximal_term(model: torch.nn.Module, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu / 2 * ||w - w_global||^2`` over the parameters named in ``anchor``."""
    params = dict(model.named_parameters())
    total = torch.zeros(())
    for name, ref in anchor.items():
        total = total + ((params[name] - ref) ** 2).sum()
    return 0.5 * mu * total


def train_site(
    global_model: GlobalModel,
    site: str,
    data: SiteData,
    config: LocalConfig,
    *,
    seed: int,
    site_index: int,
    local_state: Mapping[str, np.ndarray] | None = None,
) -> tuple[SiteUpdate, dict[str, np.ndarray]]:
    """One round of local training at a site.

    Args:
        global_model: The shared parameters this round starts from.
        site: The site's name.
        data: The site's normalized volumes.
        config: Local training settings.
        seed: The run's seed; patches, gains and noise derive from (seed, round, site_index).
        site_index: The site's position in the federation.
        local_state: The site's personalized parameters (those not in ``global_model``).

    Returns:
        (update, local_state): the message to send (shared parameters only) and the
        site's new personalized parameters, which stay at the site.
    """
    t0 = time.perf_counter()
    stream = derive_seed(seed, global_model.round, site_index, Purpose.TRAIN)
    model = build_model(global_model.arch, global_model.parameters, local_state or {})
    model.train()
    anchor = {k: torch.from_numpy(np.array(v)) for k, v in global_model.parameters.items()} if config.mu else {}
    optimizer = make_optimizer(model, config.lr)
    sampler = PatchSampler(data.train, config.patch, stream)
    steps = config.steps_for(data)
    torch.manual_seed(stream)
    sums = {"loss": 0.0, "mse": 0.0, "bpv": 0.0}
    prox_value = 0.0
    for step in range(steps):
        x = torch.from_numpy(sampler.batch(step, config.batch))
        loss, metrics = rd_loss(model, x, sample_gains(step, config.batch, stream))
        if config.mu:
            prox = proximal_term(model, anchor, config.mu)
            prox_value = float(prox.detach())
            loss = loss + prox
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        for k in sums:
            sums[k] += metrics[k]
    shared = sorted(global_model.parameters)
    arrays = model_arrays(model)
    metrics = {k: v / steps for k, v in sums.items()}
    metrics.update(steps=steps, prox=prox_value, seconds=time.perf_counter() - t0)
    update = SiteUpdate(
        site=site,
        arch=global_model.arch,
        round=global_model.round,
        parameters={k: arrays[k] for k in shared},
        num_samples=steps * config.batch,
        metrics=metrics,
    )
    return update, {k: v for k, v in arrays.items() if k not in global_model.parameters}


def drill_update(update: SiteUpdate, kind: str, global_model: GlobalModel) -> SiteUpdate:
    """The hostile update a site sends instead of ``update`` in a fault drill (``RunConfig.drill_hostile``).

    ``kind`` (one of ``medcodec_fed.config.DRILL_KINDS``): "nan" sets every parameter to
    NaN, "huge" to 1e30; "scaled" multiplies the site's change of ``global_model`` by 1e4
    (a model-replacement attack); "samples" keeps the parameters and reports 2**63 - 1
    samples, to outweigh every other site in FedAvg.
    """
    params, num_samples = dict(update.parameters), update.num_samples
    if kind == "nan":
        params = {k: np.full_like(v, np.nan) for k, v in params.items()}
    elif kind == "huge":
        params = {k: np.full_like(v, 1e30) for k, v in params.items()}
    elif kind == "scaled":
        ref = global_model.parameters
        params = {k: (ref[k] + 1e4 * (v.astype(np.float64) - ref[k])).astype(np.float32) for k, v in params.items()}
    elif kind == "samples":
        num_samples = 2**63 - 1
    else:
        raise ValueError(f"unknown drill kind {kind!r}")
    return replace(update, parameters=params, num_samples=num_samples)


def evaluate_site(
    global_model: GlobalModel,
    site: str,
    data: SiteData,
    quality_gain: float,
    *,
    local_state: Mapping[str, np.ndarray] | None = None,
) -> SiteEvaluation:
    """The site's model (global shared + own personalized parameters) on its held-back crops."""
    model = build_model(global_model.arch, global_model.parameters, local_state or {})
    metrics = evaluate_float(model, data.eval_crops, quality_gain)
    return SiteEvaluation(site=site, round=global_model.round, metrics=metrics)


def calibrate_site(
    global_model: GlobalModel,
    site: str,
    data: SiteData,
    *,
    patches: int,
    size: int,
    seed: int,
    site_index: int,
    local_state: Mapping[str, np.ndarray] | None = None,
) -> SiteCalibration:
    """Activation ranges of the site's model on ``patches`` random ``size``-cubed patches of its training volumes.

    The patches never leave the site; only the per-layer ranges do. They derive
    from (seed, site_index), so the same run always measures the same ranges.
    """
    from medcodec.training.export import calibrate, calibration_patches

    model = build_model(global_model.arch, global_model.parameters, local_state or {})
    stream = derive_seed(seed, 0, site_index, Purpose.CALIBRATE)
    calib = calibration_patches(data.train, count=patches, size=size, seed=stream)
    return SiteCalibration(site=site, arch=global_model.arch, activation_max=tuple(calibrate(model, calib)))
