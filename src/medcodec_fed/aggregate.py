"""Server-side aggregation: screen each update, then combine the accepted ones.

Screening rejects (and logs) any update that answers another round or
architecture, lacks or adds a parameter, has a wrong shape, holds a NaN or an
infinity, or reports no samples; a rejected update never enters an average.
Combining is FedAvg (mean weighted by sample counts, McMahan et al., 2017), or,
against a broken or malicious site, the coordinate-wise median or trimmed mean
(Yin et al., 2018), which ignore sample counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .messages import GlobalModel, SiteUpdate

__all__ = ["Aggregate", "Rejection", "aggregate", "check_update", "fedavg", "median", "trimmed_mean"]

log = logging.getLogger("medcodec_fed")


@dataclass(frozen=True)
class Rejection:
    """An update the server refused, and why."""

    site: str
    reason: str


@dataclass(frozen=True, eq=False)
class Aggregate:
    """Result of one aggregation.

    Attributes:
        parameters: The new shared parameters, or None when no update was accepted.
        accepted: Sites whose updates were combined, in the order given.
        rejected: Refused updates with reasons.
        num_samples: Total sample count of the accepted updates.
    """

    parameters: dict[str, np.ndarray] | None
    accepted: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    num_samples: int


def check_update(update: SiteUpdate, reference: GlobalModel) -> str | None:
    """Why ``update`` cannot be aggregated into ``reference``, or None when it can."""
    if update.arch != reference.arch:
        return f"architecture {update.arch!r}, expected {reference.arch!r}"
    if update.round != reference.round:
        return f"answers round {update.round}, expected {reference.round}"
    missing = sorted(set(reference.parameters) - set(update.parameters))
    extra = sorted(set(update.parameters) - set(reference.parameters))
    if missing:
        return f"missing parameters {missing}"
    if extra:
        return f"unexpected parameters {extra} (personalized parameters must stay local)"
    for name, ref in reference.parameters.items():
        value = update.parameters[name]
        if value.shape != ref.shape:
            return f"parameter {name!r} has shape {value.shape}, expected {ref.shape}"
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            return f"parameter {name!r} holds {bad} non-finite values"
    if update.num_samples <= 0:
        return "reports no training samples"
    return None


def fedavg(updates: Sequence[SiteUpdate]) -> dict[str, np.ndarray]:
    """Mean of the updates' parameters weighted by ``num_samples`` (float64 sums, float32 result)."""
    total = float(sum(u.num_samples for u in updates))
    out = {}
    for name in updates[0].parameters:
        acc = np.zeros(updates[0].parameters[name].shape, dtype=np.float64)
        for u in updates:  # fixed order: the same updates always give the same bits
            acc += (u.num_samples / total) * u.parameters[name].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out


def median(updates: Sequence[SiteUpdate]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of the updates' parameters (unweighted)."""
    return {
        name: np.median(np.stack([u.parameters[name] for u in updates]).astype(np.float64), axis=0).astype(np.float32)
        for name in updates[0].parameters
    }


def trimmed_mean(updates: Sequence[SiteUpdate], trim: float) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping the ``floor(trim * n)`` largest and smallest values.

    With too few updates to trim that many from both ends, as many are trimmed as
    leave at least one value (the median's behaviour for two or fewer).
    """
    n = len(updates)
    k = min(int(np.floor(trim * n)), (n - 1) // 2)
    out = {}
    for name in updates[0].parameters:
        stacked = np.sort(np.stack([u.parameters[name] for u in updates]).astype(np.float64), axis=0)
        out[name] = stacked[k : n - k].mean(axis=0).astype(np.float32)
    return out


def aggregate(
    reference: GlobalModel, updates: Sequence[SiteUpdate], *, method: str = "fedavg", trim: float = 0.1
) -> Aggregate:
    """Screen ``updates`` against ``reference`` and combine the accepted ones.

    Args:
        reference: The global model the round started from.
        updates: Updates received this round.
        method: "fedavg", "median" or "trimmed-mean".
        trim: Fraction trimmed from each end by "trimmed-mean".

    Returns:
        The new shared parameters (None if nothing was accepted) and who was accepted
        or rejected. Every rejection is also logged as a warning on ``medcodec_fed``.
    """
    accepted: list[SiteUpdate] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for update in updates:
        reason = "duplicate update from this site" if update.site in seen else check_update(update, reference)
        seen.add(update.site)
        if reason is None:
            accepted.append(update)
        else:
            rejected.append(Rejection(update.site, reason))
            log.warning("round %d: rejected the update from site %r: %s", reference.round, update.site, reason)
    if not accepted:
        return Aggregate(None, (), tuple(rejected), 0)
    if method == "fedavg":
        params = fedavg(accepted)
    elif method == "median":
        params = median(accepted)
    elif method == "trimmed-mean":
        params = trimmed_mean(accepted, trim)
    else:
        raise ValueError(f"unknown aggregation {method!r}")
    return Aggregate(params, tuple(u.site for u in accepted), tuple(rejected), sum(u.num_samples for u in accepted))
