"""Coding the test volumes with each model of the federated experiments.

Every point goes through the public codec (``medcodec.compress`` / ``decompress`` with
``model=PATH``) on a deterministic centred crop of a test volume (``medcodec.volume.center_crop``);
:func:`evaluate_all` measures each (model, volume, quality) once and keeps it in a cache file
of the run folder. Besides rate and PSNR, a point records the stream's bytes by part
(:func:`stream_sections`) and the PSNR of the autoencoder's prediction alone
(:func:`prediction_psnr`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .json_files import read_json, write_json

__all__ = [
    "evaluate_all",
    "evaluation_pairs",
    "load_test_volumes",
    "measure_point",
    "prediction_psnr",
    "stream_sections",
]


def stream_sections(data: bytes) -> dict[str, int]:
    """Bytes of a medcodec stream by part: latents, residual layer, float exceptions, rest.

    Reads the container (``medcodec.format.container.read_stream``) and each tile's sections
    (``medcodec.format.tile``, docs/FORMAT.md). A learned tile's three sections are its latents,
    residual layer and exceptions; a predictive tile (integer volumes, no network) has one,
    counted as residual; a transform tile (lossy integer volumes) has one, its quantized
    coefficients, counted as latents. Raw and palette tiles (lossless floats, no network),
    tile heads, length prefixes, checksums and the container are the rest.
    """
    from medcodec.format.container import read_stream
    from medcodec.format.tile import TilePath, read_head, read_sections

    _, chunks = read_stream(data)
    parts = {"latents": 0, "residual": 0, "exceptions": 0}
    for chunk in chunks:
        if chunk.kind != b"TILE":
            continue
        path = read_head(chunk.payload).path
        if path in (TilePath.RAW, TilePath.PALETTE):
            continue
        sections, _ = read_sections(chunk.payload, path)
        if path == TilePath.PREDICTIVE:
            parts["residual"] += len(sections[0])
        elif path == TilePath.TRANSFORM:
            parts["latents"] += len(sections[0])
        else:
            for part, section in zip(("latents", "residual", "exceptions"), sections):
                parts[part] += len(section)
    parts["other"] = len(data) - parts["latents"] - parts["residual"] - parts["exceptions"]
    return parts


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def load_test_volumes(entries, crop: Sequence[int]) -> dict[str, dict[str, Any]]:
    """name -> {"site", "volume" (cropped medcodec.Volume), "shape", "cropped_shape", "dtype"}."""
    from medcodec.files.images import read
    from medcodec.volume import Volume, center_crop

    volumes = {}
    for entry in entries:
        volume = read(entry.path)
        cropped = center_crop(volume.array, crop)
        volumes[entry.name] = {
            "site": entry.site,
            "volume": Volume(cropped, volume.spacing, volume.origin, volume.direction),
            "shape": list(volume.array.shape),
            "cropped_shape": list(cropped.shape),
            "dtype": str(cropped.dtype),
        }
    return volumes


def measure_point(model_path: str, volume, quality: int) -> dict[str, Any]:
    """One RD point through the public codec API: bytes, bpv, PSNR, max error, stream parts."""
    import medcodec

    from .metrics import bits_per_voxel, max_abs_error, psnr

    start = time.perf_counter()
    data = medcodec.compress(volume, quality=quality, model=model_path)
    decoded = medcodec.decompress(data, model=model_path).array
    seconds = time.perf_counter() - start
    original = volume.array
    return {
        "bytes": len(data),
        "bpv": bits_per_voxel(len(data), original.size),
        "psnr": _finite_or_none(psnr(original, decoded)),
        "max_abs_error": max_abs_error(original, decoded),
        "parts": stream_sections(data),
        "seconds": seconds,
    }


def prediction_psnr(model_path: str, volume, quality: int) -> float | None:
    """PSNR of the autoencoder's prediction alone (before the residual layer) at ``quality``.

    Recomputes what ``medcodec.codec`` feeds its residual layer (analysis, latent rounding at
    the quality's gain, integer synthesis, mapping to voxels), for a volume that is one codec
    tile (None otherwise, or when the prediction is exact).
    """

    from medcodec.codec import integer_valued, quality_gain
    from medcodec.coding.intensity import normalize, to_voxels
    from medcodec.format.tiling import DEFAULT_TILE, pad_edge, tile_grid
    from medcodec.model.files import load_model

    from .metrics import psnr

    voxels = volume.array
    if len(tile_grid(voxels.shape, DEFAULT_TILE)) != 1:
        return None
    codec_model = load_model(model_path)
    integer = voxels.dtype.kind != "f" or integer_valued(voxels)
    lo, hi, gain = float(voxels.min()), float(voxels.max()), quality_gain(quality)
    latents = codec_model.latents(pad_edge(normalize(voxels, lo, hi), 8), gain)
    prediction = codec_model.synthesize(latents, gain, voxels.shape)
    return _finite_or_none(psnr(voxels, to_voxels(prediction, lo, hi, integer)))


def evaluation_pairs(models: dict[str, str], volumes: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(model, volume) pairs to measure: every volume for the federated and centralized models,
    the other sites' volumes for a local-only model."""
    pairs = []
    for model in models:
        own_site = model.split("/", 1)[1] if model.startswith("local-only/") else None
        pairs += [(model, name) for name, info in volumes.items() if own_site is None or info["site"] != own_site]
    return pairs


def evaluate_all(
    models: dict[str, str],
    volumes: dict[str, dict[str, Any]],
    qualities: Sequence[int],
    cache_path: Path,
    *,
    say: Callable[[str], None],
) -> dict[str, dict[str, dict[str, Any]]]:
    """points[model][volume][str(quality)], measured or read from the cache (keyed by model file)."""
    cache = read_json(cache_path, {})
    points: dict[str, dict[str, dict[str, Any]]] = {}
    for model, name in evaluation_pairs(models, volumes):
        model_path = models[model]
        volume = volumes[name]["volume"]
        shape = "x".join(map(str, volumes[name]["cropped_shape"]))
        for quality in qualities:
            key = f"{Path(model_path).name}|{name}|{shape}|{quality}"
            if key not in cache:
                cache[key] = measure_point(model_path, volume, quality)
                write_json(cache_path, cache)
                point = cache[key]
                shown_psnr = "lossless" if point["psnr"] is None else f"{point['psnr']:.2f} dB"
                say(
                    f"{model:32s} {name[:40]:40s} q{quality:<3d} bpv {point['bpv']:.4f}  psnr {shown_psnr}  "
                    f"{point['seconds']:.1f} s"
                )
            if "pred_psnr" not in cache[key]:
                cache[key]["pred_psnr"] = prediction_psnr(model_path, volume, quality)
                write_json(cache_path, cache)
            points.setdefault(model, {}).setdefault(name, {})[str(quality)] = cache[key]
    return points
