"""The run folder: its checkpoint (``checkpoint.pt``) and metrics (``metrics.json``), written
atomically, and the check that a run may resume from a checkpoint.

Both engines (:mod:`medcodec_fed.engine` in process, :mod:`medcodec_fed.flower` across
machines) write the same files, so a run's folder reads the same whichever ran it
(docs/FEDERATED.md, "The run folder").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcodec.files.atomic import write_atomic

from .config import RESUMABLE_KEYS, RunConfig
from .sites import Site

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_VERSION",
    "METRICS",
    "METRICS_FORMAT",
    "check_resumable",
    "file_sha256",
    "load_checkpoint",
    "metrics_doc",
    "save_checkpoint",
]

log = logging.getLogger("medcodec_fed")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CHECKPOINT_VERSION = 1
METRICS_FORMAT = "medcodec-fed-metrics/1"


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _to_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in tensors.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # No RNG state is stored: every random choice is re-derived from (seed, round, site).
    blob = dict(state)
    blob["parameters"] = _to_tensors(state["parameters"])
    blob["local"] = {s: _to_tensors(p) for s, p in state["local"].items()}
    # Atomic: an interruption leaves the previous checkpoint intact.
    write_atomic(path, lambda tmp: torch.save(blob, tmp), force=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    from medcodec.training.train import load_checkpoint

    blob = load_checkpoint(path)  # plain tensors and builtins only
    if blob.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {blob.get('version')} is not {CHECKPOINT_VERSION}")
    blob["parameters"] = _to_arrays(blob["parameters"])
    blob["local"] = {s: _to_arrays(p) for s, p in blob["local"].items()}
    return blob


def check_resumable(saved: dict[str, Any], config: RunConfig, sites: Sequence[Site]) -> None:
    now = config.to_dict()
    # A setting newer than the checkpoint (drill_hostile, ...) had its default's effect there.
    was = {**RunConfig(arch=config.arch).to_dict(), **saved["config"]}
    diffs = [f"{k}: {was.get(k)!r} -> {now[k]!r}" for k in now if k not in RESUMABLE_KEYS and was.get(k) != now[k]]
    if [s.describe() for s in sites] != saved["sites"]:
        diffs.append("the sites (names or volumes) differ")
    if diffs:
        raise ValueError("cannot resume: settings differ from the checkpoint's: " + "; ".join(diffs))
    if saved["next_round"] > config.rounds + 1:
        raise ValueError(f"the checkpoint already holds {saved['next_round'] - 1} rounds; --rounds is {config.rounds}")
    if saved["config"].get("threads") != config.threads:
        log.warning(
            "resuming with %d threads instead of %d: float sums may differ in the last bits",
            config.threads,
            saved["config"].get("threads"),
        )


def metrics_doc(state: dict[str, Any], sites: Sequence[Site], config: RunConfig, **final: Any) -> dict[str, Any]:
    doc = {
        "format": METRICS_FORMAT,
        "model": None,
        "config": config.to_dict(),
        "drill": config.drill(),
        "sites": [s.describe() for s in sites],
        "rounds": state["history"],
    }
    doc.update(final)
    return doc


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
