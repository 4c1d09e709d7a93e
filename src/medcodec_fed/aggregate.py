"""Server-side aggregation: screen each update, then combine the accepted ones.

Screening rejects (and logs) any update that answers another round or
architecture, lacks or adds a parameter, has a wrong shape, holds a NaN or an
infinity, or reports no samples; then any update whose distance to the global
model is far outside the other sites' (:func:`distance_bound`). A rejected update
never enters an average. Combining is FedAvg (mean weighted by sample counts,
each capped at ``max_samples``; McMahan et al., 2017), or, against a broken or
malicious site, the coordinate-wise median or trimmed mean (Yin et al., 2018),
which ignore sample counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .messages import GlobalModel, SiteUpdate

__all__ = [
    "DISTANCE_FACTOR",
    "DISTANCE_FLOOR",
    "LONE_DISTANCE",
    "MAX_SAMPLES",
    "Aggregate",
    "Rejection",
    "aggregate",
    "check_update",
    "distance_bound",
    "fedavg",
    "mean_metric",
    "median",
    "trimmed_mean",
    "update_distance",
]

log = logging.getLogger("medcodec_fed")

#: Sample count an update is weighted with at most, unless the caller gives its own cap.
#: The engines pass ``RunConfig.sample_cap()`` (``local_steps * batch`` with local steps).
MAX_SAMPLES = 1 << 20

#: With three or more updates, one farther from the global model than this many times
#: the median distance of the round's updates is rejected. Honest sites of one round
#: lie within a factor of about 1.2 of each other (Adam moves every parameter by about
#: the learning rate per step, whatever a site's data); 10 leaves room for non-IID data
#: and for the unequal step counts of ``local_epochs``.
DISTANCE_FACTOR = 10.0

#: Distances below this fraction of the global model's norm are always accepted, so a
#: round where every update is tiny (a converged model, a small learning rate) is not
#: decided by noise-level differences.
DISTANCE_FLOOR = 0.01

#: With one or two updates there is no majority to compare with: an update farther from
#: the global model than this many times the model's own norm is rejected. Honest
#: updates measured at up to 0.55 (round 1, ten times the default learning rate).
LONE_DISTANCE = 2.0

# The norm a bound scales with is at least that of a model whose parameters have this
# RMS (an initialized network has about 0.1), so an all-zero model still has a scale.
_MIN_RMS = 0.01


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
        num_samples: Total sample count of the accepted updates, as weighted (each
            capped at ``max_samples``).
        capped: Accepted sites whose sample count exceeded ``max_samples``.
    """

    parameters: dict[str, np.ndarray] | None
    accepted: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    num_samples: int
    capped: tuple[str, ...] = ()


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
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        return f"num_samples must be an integer, got {type(n).__name__}"
    if n <= 0:
        return "reports no training samples"
    return None


def _norm(arrays: Iterable[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays))


def update_distance(update: SiteUpdate, reference: GlobalModel) -> float:
    """L2 norm of ``update - reference`` over all shared parameters (float64)."""
    return _norm(update.parameters[k].astype(np.float64) - ref for k, ref in reference.parameters.items())


def distance_bound(reference: GlobalModel, distances: Sequence[float]) -> tuple[float, str]:
    """The largest distance to ``reference`` an update of this round may have, and how it was set.

    With three or more updates: ``max(DISTANCE_FACTOR * median, DISTANCE_FLOOR * scale)``;
    with one or two: ``LONE_DISTANCE * scale``. ``scale`` is the global model's L2 norm
    (at least that of a model of RMS 0.01).
    """
    size = sum(int(np.size(v)) for v in reference.parameters.values())
    scale = max(_norm(reference.parameters.values()), _MIN_RMS * math.sqrt(size))
    if len(distances) >= 3:
        med = float(np.median(distances))
        floor = DISTANCE_FLOOR * scale
        if DISTANCE_FACTOR * med >= floor:
            return DISTANCE_FACTOR * med, f"{DISTANCE_FACTOR:g} x the median {med:.3g} of {len(distances)} updates"
        return floor, f"the floor {DISTANCE_FLOOR:g} x the global model's norm {scale:.3g}"
    return LONE_DISTANCE * scale, f"{LONE_DISTANCE:g} x the global model's norm {scale:.3g} (too few to compare)"


def _weights(updates: Sequence[SiteUpdate], max_samples: int | None) -> list[int]:
    return [u.num_samples if max_samples is None else min(u.num_samples, max_samples) for u in updates]


def fedavg(updates: Sequence[SiteUpdate], *, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Mean of the updates' parameters weighted by ``num_samples`` (float64 sums, float32 result).

    Each weight is capped at ``max_samples`` (None: uncapped), so no site weighs more
    than that however many samples it reports.
    """
    weights = _weights(updates, max_samples)
    total = float(sum(weights))
    out = {}
    for name in updates[0].parameters:
        acc = np.zeros(updates[0].parameters[name].shape, dtype=np.float64)
        for u, w in zip(updates, weights):  # fixed order: the same updates always give the same bits
            acc += (w / total) * u.parameters[name].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out


def mean_metric(values: Sequence[float]) -> float | None:
    """The mean of the sites' values of a round metric (loss, PSNR, bpv), None when no site has one."""
    return float(np.mean(values)) if len(values) else None


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
    reference: GlobalModel,
    updates: Sequence[SiteUpdate],
    *,
    method: str = "fedavg",
    trim: float = 0.1,
    max_samples: int | None = MAX_SAMPLES,
) -> Aggregate:
    """Screen ``updates`` against ``reference`` and combine the accepted ones.

    Args:
        reference: The global model the round started from.
        updates: Updates received this round.
        method: "fedavg", "median" or "trimmed-mean".
        trim: Fraction trimmed from each end by "trimmed-mean".
        max_samples: The largest sample count an update is weighted with by "fedavg"
            (None: uncapped).

    Returns:
        The new shared parameters (None if nothing was accepted) and who was accepted
        or rejected. Every rejection and every capped count is also logged as a warning
        on ``medcodec_fed``.
    """
    screened: list[SiteUpdate] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()

    def reject(site: str, reason: str) -> None:
        rejected.append(Rejection(site, reason))
        log.warning("round %d: rejected the update from site %r: %s", reference.round, site, reason)

    for update in updates:
        reason = "duplicate update from this site" if update.site in seen else check_update(update, reference)
        seen.add(update.site)
        if reason is None:
            screened.append(update)
        else:
            reject(update.site, reason)
    # Finite but huge updates (a site sending 1e30, or its update scaled up) would drag the
    # average there and make every site diverge the next round: compare distances.
    accepted: list[SiteUpdate] = []
    if screened:
        distances = [update_distance(u, reference) for u in screened]
        bound, why = distance_bound(reference, distances)
        for update, d in zip(screened, distances):
            if d > bound:
                reject(update.site, f"distance {d:.3g} to the global model exceeds {bound:.3g} ({why})")
            else:
                accepted.append(update)
    if not accepted:
        return Aggregate(None, (), tuple(rejected), 0)
    weights = _weights(accepted, max_samples)
    capped = tuple(u.site for u, w in zip(accepted, weights) if w != u.num_samples)
    for u in accepted:
        if u.site in capped:
            log.warning(
                "round %d: site %r reports %d samples; counted as %d (max_samples)",
                reference.round,
                u.site,
                u.num_samples,
                max_samples,
            )
    if method == "fedavg":
        params = fedavg(accepted, max_samples=max_samples)
    elif method == "median":
        params = median(accepted)
    elif method == "trimmed-mean":
        params = trimmed_mean(accepted, trim)
    else:
        raise ValueError(f"unknown aggregation {method!r}")
    return Aggregate(params, tuple(u.site for u in accepted), tuple(rejected), sum(weights), capped)
