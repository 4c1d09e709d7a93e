"""The in-process engine: the round loop, resume, export and report (the run folder's files
are :mod:`medcodec_fed.runfolder`'s).

One process plays the server and every site. The boundary is kept in the
code's shape all the same: site data (:class:`~medcodec_fed.sites.SiteData`)
and personalized parameters live in per-site slots that only the site-side
functions of :mod:`medcodec_fed.local` touch; the server side sees only
:class:`~medcodec_fed.messages.SiteUpdate` and
:class:`~medcodec_fed.messages.SiteEvaluation` messages.

Each round: sample ``fraction`` of the sites, drop each sampled site with its
dropout probability, train the rest locally from the global model, screen and
aggregate their updates, evaluate every site's model on its held-back volumes,
write ``checkpoint.pt`` and ``metrics.json``. Every random choice derives from
(seed, round, site), so a run resumed from any checkpoint ends with the same
bytes as one that was never interrupted (same machine, same thread count).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcodec.files.atomic import write_json

from .aggregate import Rejection, aggregate, mean_metric
from .config import LocalConfig, RunConfig
from .evaluate import evaluate_codec, quality_to_gain
from .local import build_model, drill_update, evaluate_site, model_arrays, train_site
from .messages import GlobalModel, MessageError, parameter_spec
from .randomness import Purpose, derive_seed
from .runfolder import (
    CHECKPOINT,
    CHECKPOINT_VERSION,
    METRICS,
    check_resumable,
    file_sha256,
    load_checkpoint,
    metrics_doc,
    save_checkpoint,
)
from .sites import Site, SiteData, held_out_volumes, load_site

__all__ = ["RunResult", "dropped_sites", "initial_parameters", "run", "sample_sites"]

log = logging.getLogger("medcodec_fed")


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        out: The run folder.
        metrics: The content of ``metrics.json``.
        model: The global model file (None when export is off).
        site_models: Each site's own model file (only with personalization).
    """

    out: Path
    metrics: dict[str, Any]
    model: Path | None
    site_models: dict[str, Path] = field(default_factory=dict)


def sample_sites(config: RunConfig, num_sites: int, round_: int) -> list[int]:
    """Indices of the sites sampled in ``round_``: ``ceil(fraction * n)`` of them, at least one."""
    k = max(1, math.ceil(config.fraction * num_sites - 1e-9))
    if k >= num_sites:
        return list(range(num_sites))
    rng = np.random.default_rng(derive_seed(config.seed, round_, 0, Purpose.SAMPLE))
    return sorted(int(i) for i in rng.choice(num_sites, size=k, replace=False))


def dropped_sites(config: RunConfig, names: Sequence[str], sampled: Sequence[int], round_: int) -> list[int]:
    """The sampled sites that drop out of ``round_`` (probability 1 always drops, 0 never does)."""
    dropped = []
    for i in sampled:
        p = config.site_dropout.get(names[i], config.dropout)
        u = np.random.default_rng(derive_seed(config.seed, round_, i, Purpose.DROPOUT)).random()
        if u < p:
            dropped.append(i)
    return dropped


def initial_parameters(config: RunConfig) -> dict[str, np.ndarray]:
    """Round-0 parameters: from ``config.init`` (a checkpoint or state dict) or seeded initialization.

    Raises:
        medcodec.CheckpointError: ``config.init`` holds more than plain tensors and builtins
            (it is never unpickled as objects), or no state dict of ``config.arch``.
    """
    from medcodec.errors import CheckpointError
    from medcodec.model.network import ARCHITECTURES, Autoencoder
    from medcodec.training.train import load_checkpoint

    if config.init:
        blob = load_checkpoint(config.init)  # an operator-supplied file: plain data only
        state = blob.get("model", blob) if isinstance(blob, dict) else blob
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{config.init}: neither a state dict nor a checkpoint holding one under 'model'")
        try:
            model = build_model(config.arch, {k: v.numpy() for k, v in state.items()})
        except (ValueError, RuntimeError) as exc:  # missing parameters, or shapes of another architecture
            raise CheckpointError(f"{config.init}: not a state dict of {config.arch!r}: {exc}") from None
        return model_arrays(model)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(config.seed, 0, 0, Purpose.INIT))
        return model_arrays(Autoencoder(ARCHITECTURES[config.arch]))


# --- the run ------------------------------------------------------------------------------


def _round_line(rec: dict[str, Any], rounds: int, num_sites: int) -> str:
    parts = [f"round {rec['round']}/{rounds}", f"trained {len(rec['accepted'])}/{num_sites} sites"]
    if len(rec["sampled"]) < num_sites:
        parts.append(f"sampled {','.join(rec['sampled'])}")
    if rec["dropped"]:
        parts.append("dropped " + ",".join(rec["dropped"]))
    if rec["rejected"]:
        parts.append("rejected " + ",".join(r["site"] for r in rec["rejected"]))
    g = rec["global"]
    if rec["kept_previous"]:
        parts.append("no update accepted: global model kept")
    elif g.get("loss") is not None:
        parts.append(f"loss {g['loss']:.4f}")
    parts.append(f"psnr {g['psnr']:.2f} dB  bpv {g['bpv']:.4f}" + (f"  ssim {g['ssim']:.4f}" if g.get("ssim") else ""))
    parts.append(f"{rec['seconds']:.1f} s")
    return "  ".join(parts)


def run(
    sites: Sequence[Site],
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    say: Callable[[str], None] = print,
) -> RunResult:
    """Run (or resume) a federated training and write its model file, metrics and plots.

    Args:
        sites: The federation's sites (names unique).
        config: Settings.
        out: Run folder: ``checkpoint.pt``, ``metrics.json``, the model file(s), plots.
        resume: Continue from ``out/checkpoint.pt`` (a fresh start when there is none).
        say: Receives one progress line per round and a few more.

    Raises:
        FileExistsError: ``out`` holds a checkpoint and ``resume`` is False.
        ValueError: Bad sites or settings, or settings that differ from the checkpoint's.
        medcodec.CheckpointError: ``config.init`` is refused.
        medcodec.VolumeIOError: A site's volume cannot be read.

    A run that fails before it wrote anything removes the ``out`` folder it created.
    """
    out = Path(out)
    names = [s.name for s in sites]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"site names must be unique and at least one site is needed, got {names}")
    spec = parameter_spec(config.arch)
    local_names = config.local_names(list(spec))
    shared_names = [n for n in spec if n not in local_names]
    for setting in ("site_dropout", "drill_hostile"):
        unknown = sorted(set(getattr(config, setting)) - set(names))
        if unknown:
            raise ValueError(f"{setting} names unknown sites {unknown}")
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or choose another out")

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    created = not out.exists()
    try:
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path)
            check_resumable(state, config, sites)
            state["config"] = config.to_dict()
            say(f"resuming {out} after round {state['next_round'] - 1}")
        else:
            params = initial_parameters(config)
            state = {
                "version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "sites": [s.describe() for s in sites],
                "next_round": 1,
                "parameters": params,
                # Each site's personalized parameters start from the initial model's.
                "local": {s: {k: params[k].copy() for k in local_names} for s in names},
                "history": [],
                "baselines": None,
            }
        data = {s.name: load_site(s, eval_crop=config.eval_crop) for s in sites}
        out.mkdir(parents=True, exist_ok=True)  # only once the inputs are readable
        if config.drill():
            say(config.drill()["note"])
        gain = quality_to_gain(config.quality)
        lc = config.local_config()
        for r in range(state["next_round"], config.rounds + 1):
            rec = _round(r, state, sites, data, config, lc, shared_names, gain)
            state["history"].append(rec)
            state["next_round"] = r + 1
            save_checkpoint(ckpt_path, state)
            write_json(out / METRICS, metrics_doc(state, sites, config), nonfinite_as_null=True)
            say(_round_line(rec, config.rounds, len(sites)))
        return _finish(state, sites, data, config, out, shared_names, gain, say)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before its first checkpoint leaves nothing behind
        raise
    finally:
        torch.set_num_threads(threads)


def _round(
    r: int,
    state: dict[str, Any],
    sites: Sequence[Site],
    data: dict[str, SiteData],
    config: RunConfig,
    lc: LocalConfig,
    shared_names: list[str],
    gain: float,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = [s.name for s in sites]
    params = state["parameters"]
    current = GlobalModel(config.arch, r, {k: params[k] for k in shared_names})
    sampled = sample_sites(config, len(sites), r)
    dropped = dropped_sites(config, names, sampled, r)
    updates, new_local, early_rejects = [], {}, []
    for i in sampled:
        if i in dropped:
            continue
        name = names[i]
        try:
            update, local = train_site(
                current, name, data[name], lc, seed=config.seed, site_index=i, local_state=state["local"][name]
            )
            if name in config.drill_hostile:
                update = drill_update(update, config.drill_hostile[name], current)
        except MessageError as exc:  # the site could not even build a valid message
            early_rejects.append(Rejection(name, f"malformed update: {exc}"))
            log.warning("round %d: rejected the update from site %r: malformed update: %s", r, name, exc)
            continue
        updates.append(update)
        new_local[name] = local
    result = aggregate(current, updates, method=config.aggregation, trim=config.trim, max_samples=config.sample_cap())
    if result.parameters is not None:
        params.update(result.parameters)
        for name in result.accepted:  # a rejected site's local part is as suspect as its update
            state["local"][name] = new_local[name]
    else:
        log.warning("round %d: no update accepted; the global model is kept", r)
    shared = GlobalModel(config.arch, r, {k: params[k] for k in shared_names})
    evaluations = {n: evaluate_site(shared, n, data[n], gain, local_state=state["local"][n]) for n in names}
    train = {u.site: dict(u.metrics) | {"num_samples": u.num_samples} for u in updates}
    evals = {n: dict(e.metrics) for n, e in evaluations.items()}
    losses = [train[s]["loss"] for s in result.accepted]
    rejected = [*early_rejects, *result.rejected]
    return {
        "round": r,
        "sampled": [names[i] for i in sampled],
        "dropped": [names[i] for i in dropped],
        "accepted": list(result.accepted),
        "rejected": [{"site": x.site, "reason": x.reason} for x in rejected],
        "kept_previous": result.parameters is None,
        "num_samples": result.num_samples,
        "capped": list(result.capped),
        "train": train,
        "eval": evals,
        "global": {
            "loss": mean_metric(losses),
            "psnr": mean_metric([e["psnr"] for e in evals.values()]),
            "bpv": mean_metric([e["bpv"] for e in evals.values()]),
            "ssim": mean_metric([e["ssim"] for e in evals.values() if "ssim" in e]),
        },
        "seconds": time.perf_counter() - t0,
    }


def _finish(
    state: dict[str, Any],
    sites: Sequence[Site],
    data: dict[str, SiteData],
    config: RunConfig,
    out: Path,
    shared_names: list[str],
    gain: float,
    say: Callable[[str], None],
) -> RunResult:
    from .model_files import export_run_models

    model_path, site_models = None, {}
    final: dict[str, Any] = {}
    slices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if config.export:
        model_path, site_models = export_run_models(state, sites, data, config, out, shared_names)
        say(f"model: {model_path}")
        for s in sites:
            path = site_models.get(s.name, model_path)
            metrics, sl = evaluate_codec(path, held_out_volumes(s), config.quality, crop=config.final_crop)
            final[s.name] = metrics
            if sl is not None:
                slices[s.name] = sl
            say(
                f"final {s.name}: ratio {metrics['ratio']:.2f}  bpv {metrics['bpv']:.4f}"
                + (f"  psnr {metrics['psnr']:.2f} dB" if "psnr" in metrics else "")
            )
    if config.baselines:
        from .baselines import run_baselines

        if state["baselines"] is None or state["baselines"].get("rounds") != config.rounds:
            state["baselines"] = run_baselines(state, sites, data, config, gain, say=say)
            save_checkpoint(out / CHECKPOINT, state)
    doc = metrics_doc(
        state,
        sites,
        config,
        model=model_path.name if model_path else None,
        modelfile_sha256=file_sha256(model_path) if model_path else None,
        site_models={n: str(p.relative_to(out)) for n, p in site_models.items()},
        final=final,
        baselines=state["baselines"] if config.baselines else None,
    )
    write_json(out / METRICS, doc, nonfinite_as_null=True)
    if config.plots:
        from .plots import draw_all

        for p in draw_all(doc, out, slices=slices):
            say(f"plot: {p}")
    return RunResult(out, doc, model_path, site_models)
