"""The comparisons of the federated experiments, from the measured RD points.

``points[model][volume][str(quality)]`` (``benchmarks.federated_evaluate.evaluate_all``) gives
per test volume, by ``benchmarks.bdrate.bd_rate``:

1. federated vs centralized (the reference), on every test volume;
2. federated vs the local-only model of each site, on the other sites' test volumes;
3. federated with dropout vs without, on every test volume;

then their means and whether each target (:data:`TARGETS`) holds, the same comparisons with
the latents left out of the rate, the differences in prediction PSNR, the seed-to-seed
variation when a second seed was trained, and each model's share of latents in its streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .bdrate import bd_rate

__all__ = [
    "TARGETS",
    "bd_per_volume",
    "experiments",
    "per_volume_bd_rates",
    "prediction_gaps",
    "rate_without_latents",
    "stream_shares",
]

#: The largest gap (%) that still meets each target.
TARGETS = {"centralized_gap_pct": 3.0, "dropout_gap_pct": 5.0}

Point = dict[str, Any]
Points = dict[str, dict[str, dict[str, Point]]]


def total_rate(point: Point) -> float:
    """The whole stream's rate (bpv)."""
    return point["bpv"]


def rate_without_latents(point: Point) -> float:
    """The rate (bpv) of the stream less its latents: residual layer, exceptions and headers."""
    return point["bpv"] * (1.0 - point["parts"]["latents"] / point["bytes"])


def _rd_curve(by_quality: dict[str, Point], rate: Callable[[Point], float]) -> tuple[list[float], list[float]]:
    qualities = sorted(by_quality, key=int)
    rates = [rate(by_quality[quality]) for quality in qualities]
    psnrs = [by_quality[quality]["psnr"] for quality in qualities]
    psnrs = [float("inf") if psnr is None else psnr for psnr in psnrs]  # None: lossless
    return rates, psnrs


def bd_per_volume(
    points: Points, ref: str, test: str, volumes: Sequence[str], rate: Callable[[Point], float] = total_rate
) -> dict[str, float | None]:
    """BD-rate (%) of ``test`` against ``ref`` on each volume (negative: test needs fewer bits).

    ``rate``: the rate of a point to compare (by default its bpv).
    """
    bd_rates = {}
    for volume in volumes:
        ref_rates, ref_psnrs = _rd_curve(points[ref][volume], rate)
        test_rates, test_psnrs = _rd_curve(points[test][volume], rate)
        bd_rates[volume] = bd_rate(ref_rates, ref_psnrs, test_rates, test_psnrs)
    return bd_rates


def _mean_of_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def _other_sites_volumes(volumes: dict[str, dict[str, Any]], site: str) -> list[str]:
    return [name for name, info in volumes.items() if info["site"] != site]


def experiments(points: Points, volumes: dict[str, dict[str, Any]], sites: Sequence[str]) -> dict[str, Any]:
    """The three comparisons, with per-volume BD-rates, their means and whether each target holds."""
    names = list(volumes)
    vs_centralized = bd_per_volume(points, "centralized", "federated", names)
    dropout = bd_per_volume(points, "federated", "federated-dropout", names)
    vs_local_only = {}
    for site in sites:
        local_model = f"local-only/{site}"
        if local_model not in points:
            continue
        others = _other_sites_volumes(volumes, site)
        per_volume = bd_per_volume(points, local_model, "federated", others)
        vs_local_only[site] = {
            "per_volume": per_volume,
            "mean": _mean_of_known(per_volume.values()),
            "federated_better_on": sum(1 for value in per_volume.values() if value is not None and value < 0),
            "volumes": len(others),
        }
    mean_vs_centralized, mean_dropout = _mean_of_known(vs_centralized.values()), _mean_of_known(dropout.values())
    seed_variation = {}
    if "federated-seed-b" in points and "centralized-seed-b" in points:
        for key, ref, test in (
            ("federated_seed_a_vs_b", "federated", "federated-seed-b"),
            ("centralized_seed_a_vs_b", "centralized", "centralized-seed-b"),
            ("federated_vs_centralized_seed_b", "centralized-seed-b", "federated-seed-b"),
        ):
            per_volume = bd_per_volume(points, ref, test, names)
            seed_variation[key] = {
                "reference": ref,
                "test": test,
                "per_volume": per_volume,
                "mean": _mean_of_known(per_volume.values()),
            }
    all_local_only_pairs = [
        value for result in vs_local_only.values() for value in result["per_volume"].values() if value is not None
    ]

    def mean_bd_without_latents(ref: str, test: str, volume_names: Sequence[str]) -> float | None:
        # the same comparisons on the stream without its latents (residual layer + headers)
        return _mean_of_known(bd_per_volume(points, ref, test, volume_names, rate_without_latents).values())

    without_latents = {
        "federated_vs_centralized": mean_bd_without_latents("centralized", "federated", names),
        "dropout_vs_no_dropout": mean_bd_without_latents("federated", "federated-dropout", names),
        "federated_vs_local_only": {
            site: mean_bd_without_latents(f"local-only/{site}", "federated", _other_sites_volumes(volumes, site))
            for site in sites
            if f"local-only/{site}" in points
        },
    }
    centralized_gap, dropout_gap = TARGETS["centralized_gap_pct"], TARGETS["dropout_gap_pct"]
    return {
        "bd_rate_without_latents": without_latents,
        "prediction_psnr_gaps": prediction_gaps(points, volumes, sites),
        "federated_vs_centralized": {
            "per_volume": vs_centralized,
            "mean": mean_vs_centralized,
            "target_pct": centralized_gap,
            "holds": mean_vs_centralized is not None and abs(mean_vs_centralized) <= centralized_gap,
        },
        "federated_vs_local_only": {
            "per_site": vs_local_only,
            "mean_over_all_pairs": _mean_of_known(all_local_only_pairs),
            "sites_where_federated_better": sorted(
                site for site, result in vs_local_only.items() if result["mean"] is not None and result["mean"] < 0
            ),
            "holds": bool(vs_local_only)
            and all(result["mean"] is not None and result["mean"] < 0 for result in vs_local_only.values()),
        },
        "dropout_vs_no_dropout": {
            "per_volume": dropout,
            "mean": mean_dropout,
            "target_pct": dropout_gap,
            "holds": mean_dropout is not None and abs(mean_dropout) <= dropout_gap,
        },
        "seed_variation": seed_variation,
    }


def prediction_gaps(points: Points, volumes: dict[str, dict[str, Any]], sites: Sequence[str]) -> dict[str, Any]:
    """Mean over volumes (and qualities) of the difference in prediction PSNR (dB), test - reference.

    The same comparisons as the BD-rates, on the autoencoder's prediction before the residual layer.
    """

    def gap(ref: str, test: str, volume_names: Sequence[str]) -> float | None:
        differences = [
            points[test][volume][quality]["pred_psnr"] - points[ref][volume][quality]["pred_psnr"]
            for volume in volume_names
            if volume in points.get(ref, {}) and volume in points.get(test, {})
            for quality in points[ref][volume]
            if points[ref][volume][quality].get("pred_psnr") is not None
            and points[test][volume][quality].get("pred_psnr") is not None
        ]
        return float(np.mean(differences)) if differences else None

    names = list(volumes)
    gaps: dict[str, Any] = {
        "federated_minus_centralized": gap("centralized", "federated", names),
        "dropout_minus_federated": gap("federated", "federated-dropout", names),
        "federated_minus_local_only": {
            site: gap(f"local-only/{site}", "federated", _other_sites_volumes(volumes, site))
            for site in sites
            if f"local-only/{site}" in points
        },
    }
    if "federated-seed-b" in points:
        gaps["federated_seed_b_minus_a"] = gap("federated", "federated-seed-b", names)
        gaps["centralized_seed_b_minus_a"] = gap("centralized", "centralized-seed-b", names)
        gaps["federated_minus_centralized_seed_b"] = gap("centralized-seed-b", "federated-seed-b", names)
    return gaps


def per_volume_bd_rates(comparisons: dict[str, Any]) -> list[float]:
    """Every per-volume BD-rate of the three comparisons (None left out), in report order."""
    values = [
        value
        for key in ("federated_vs_centralized", "dropout_vs_no_dropout")
        for value in comparisons[key]["per_volume"].values()
    ]
    values += [
        value
        for result in comparisons["federated_vs_local_only"]["per_site"].values()
        for value in result["per_volume"].values()
    ]
    return [value for value in values if value is not None]


def stream_shares(points: Points) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and quality: share of the stream taken by latents and by the residual layer."""
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for model, by_volume in points.items():
        per_quality: dict[str, list[tuple[int, int, int]]] = {}
        for by_quality in by_volume.values():
            for quality, point in by_quality.items():
                parts = point["parts"]
                per_quality.setdefault(quality, []).append((parts["latents"], parts["residual"], point["bytes"]))
        shares[model] = {}
        for quality, sizes in per_quality.items():
            total = sum(stream for _, _, stream in sizes)
            shares[model][quality] = {
                "latents": sum(latents for latents, _, _ in sizes) / total,
                "residual": sum(residual for _, residual, _ in sizes) / total,
            }
    return shares
