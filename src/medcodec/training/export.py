"""Conversion of a trained float autoencoder into an integer-exact model file.

Weights are scaled per output channel to integers (at most 127 in magnitude,
and small enough that every float32 partial sum stays exact, see
:mod:`medcodec.model.intnet`); activation scales come from the activations the float
network produces on calibration data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.files import save_model_file
from ..model.intnet import ACT_MAX, EXACT_LIMIT, GAIN_ONE, OUT_FRAC_BITS, SHIFT
from ..model.network import ARCHITECTURES, Autoencoder

__all__ = ["export_model", "export_checkpoint", "calibrate"]

_CALIBRATION_GAINS = (0.5, 1.0, 2.0, 4.0, 8.0)
_MARGIN = 1 << 18  # room for the rounding of up to ~1000 weights by 0.5 * 255


@torch.no_grad()
def calibrate(model: Autoencoder, patches: list[np.ndarray], quantile: float = 0.99995) -> list[float]:
    """Activation range of each hidden synthesis layer's output on calibration patches."""
    model.eval()
    samples: list[list[np.ndarray]] = [[] for _ in model.g_s[:-1]]
    rng = np.random.default_rng(0)
    for patch in patches:
        x = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None, None]
        y = model.g_a(x)
        for g in _CALIBRATION_GAINS:
            h = torch.round(y * g) / g
            for i, layer in enumerate(model.g_s[:-1]):
                h = layer(h)
                flat = h.flatten().numpy()
                samples[i].append(rng.choice(flat, size=min(flat.size, 20000), replace=False))
    return [max(float(np.quantile(np.concatenate(s), quantile)), 1e-3) for s in samples]


def _quantize_layer(
    w: np.ndarray, b: np.ndarray, s_in: float, s_out: float, *, first: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cout = w.shape[0]
    flat = w.reshape(cout, -1).astype(np.float64)
    b = b.astype(np.float64)
    max_abs = np.maximum(np.abs(flat).max(1), 1e-12)
    sw = 127.0 / max_abs
    if not first:
        # Keep 255 * sum|w_int| + |b_int| < 2**24 so float32 convolution is exact.
        l1 = np.abs(flat).sum(1)
        sw = np.minimum(sw, (EXACT_LIMIT - _MARGIN) / (ACT_MAX * l1 + np.abs(b) * s_in + 1e-12))
    w_int = np.round(flat * sw[:, None]).astype(np.int64)
    if first:
        b_int = np.round(b * sw * GAIN_ONE).astype(np.int64)  # at gain 1, units 2**-16
    else:
        b_int = np.round(b * sw * s_in).astype(np.int64)
        worst = ACT_MAX * np.abs(w_int).sum(1) + np.abs(b_int)
        if (worst >= EXACT_LIMIT).any():
            raise AssertionError("integer layer would exceed the exact float32 range")
    mult = np.round(s_out / (sw * s_in) * (1 << SHIFT)).astype(np.int64)
    return w_int.reshape(w.shape).astype(np.int32), b_int, mult


def export_model(
    model: Autoencoder,
    out_dir: Path,
    calibration: list[np.ndarray] | None = None,
    *,
    activation_max: list[float] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an integer-exact, content-hashed model file in ``out_dir``.

    Args:
        model: A trained float autoencoder.
        out_dir: Folder for the ``<arch>-<sha8>.mcw`` file.
        calibration: Normalized float32 patches (values in [-1, 1], sides multiples of 8)
            on which activation ranges are measured.
        activation_max: Activation ranges measured elsewhere (see :func:`calibrate`), instead
            of ``calibration``; a federation takes the maximum of its sites' ranges, so no
            voxel has to leave a site for the export.
        meta: Extra metadata recorded in the file (JSON-able).

    Returns:
        Path of the written model file.
    """
    if (calibration is None) == (activation_max is None):
        raise ValueError("give exactly one of calibration and activation_max")
    act_max = list(activation_max) if activation_max is not None else calibrate(model, calibration)
    if len(act_max) != len(model.g_s) - 1:
        raise ValueError(f"activation_max needs {len(model.g_s) - 1} values, got {len(act_max)}")
    scales = [1.0] + [ACT_MAX / a for a in act_max] + [float(1 << OUT_FRAC_BITS)]
    tensors: dict[str, np.ndarray] = {
        k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items() if k.startswith("g_a.")
    }
    for i, layer in enumerate(model.g_s):
        w = layer.conv.weight.detach().cpu().numpy()
        b = layer.conv.bias.detach().cpu().numpy()
        w_int, b_int, mult = _quantize_layer(w, b, scales[i], scales[i + 1], first=i == 0)
        tensors[f"int.{i}.weight"] = w_int
        tensors[f"int.{i}.bias"] = b_int
        tensors[f"int.{i}.mult"] = mult
    info = {
        "activation_max": [round(a, 6) for a in act_max],
        "synthesis_layers": [{"shuffle": layer.shuffle, "relu": layer.relu} for layer in model.g_s],
    }
    info.update(meta or {})
    return save_model_file(model.arch, tensors, info, out_dir)


def calibration_patches(volumes: list[np.ndarray], count: int = 12, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Random normalized patches for :func:`calibrate`, reproducible by seed."""
    from .train import random_crop

    rng = np.random.default_rng(seed)
    return [random_crop(volumes[int(rng.integers(len(volumes)))], size, rng).copy() for _ in range(count)]


def export_checkpoint(checkpoint: Path, out_dir: Path, data: str | None = None) -> Path:
    """Export a training checkpoint (see :mod:`medcodec.training.train`) using train-split calibration patches.

    Raises:
        CheckpointError: The checkpoint holds more than plain data (it is never unpickled
            as objects) or is not one of :mod:`medcodec.training.train`'s.
    """
    from ..errors import CheckpointError
    from ..files.images import read
    from .datasets import load_manifest
    from .train import load_checkpoint, normalize_volume

    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt, dict) or "model" not in ckpt or ckpt.get("arch") not in ARCHITECTURES:
        raise CheckpointError(f"{checkpoint}: not a medcodec.training checkpoint (no 'model' and known 'arch')")
    model = Autoencoder(ARCHITECTURES[ckpt["arch"]])
    model.load_state_dict(ckpt["model"])
    entries = load_manifest(Path(data) if data else None, split="train")
    volumes = [normalize_volume(read(e.path).array) for e in entries]
    meta = {
        "trained_on": "train split of the medcodec data folder (centralized)",
        "steps": int(ckpt["step"]),
        "train_hours": round(float(ckpt["elapsed_s"]) / 3600, 2),
        "config": {k: v for k, v in ckpt.get("config", {}).items() if k in ("batch", "patch", "lr", "seed", "steps")},
    }
    return export_model(model, out_dir, calibration_patches(volumes), meta=meta)
