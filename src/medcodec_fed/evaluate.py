"""Rate and distortion of a model on a site's held-back volumes.

Two paths:

* :func:`evaluate_float` — cheap, run every round: the float network at the
  fixed quality's latent gain on a centred crop of each held-back volume; rate
  from the factorized prior's likelihoods of the rounded latents, distortion on
  the normalized data (range [-1, 1], so PSNR's peak is 2, the volume's own
  dynamic range).
* :func:`evaluate_codec` — the real thing, run on the final model file:
  ``medcodec.compress`` / ``decompress`` at that quality on the held-back
  volumes in their original dtype; PSNR over each volume's own range.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from medcodec.volume import center_crop  # also medcodec_fed.sites' crop, through this module

__all__ = ["center_crop", "evaluate_codec", "evaluate_float", "quality_to_gain", "reconstruct_float", "ssim3d"]


def quality_to_gain(quality: int) -> float:
    """The float latent gain the codec uses at ``quality`` (``medcodec.codec.quality_gain``)."""
    from medcodec.codec import quality_gain
    from medcodec.model.intnet import GAIN_ONE

    return quality_gain(quality) / GAIN_ONE


@torch.no_grad()
def reconstruct_float(model: torch.nn.Module, volume: np.ndarray, gain: float) -> tuple[np.ndarray, float]:
    """Float reconstruction of a normalized volume and the prior's estimate of its size in bits."""
    shape = volume.shape
    pad = [(0, -s % 8) for s in shape]  # the network needs sides that are multiples of 8
    x = torch.from_numpy(np.pad(volume, pad, mode="edge").astype(np.float32))[None, None]
    g = torch.tensor(float(gain)).view(1, 1, 1, 1, 1)
    y_hat = torch.round(model.g_a(x) * g)
    bits = float(-torch.log2(model.prior.likelihood(y_hat, g)).sum())
    x_hat = model.g_s(y_hat / g).clamp(-1.0, 1.0)[0, 0, : shape[0], : shape[1], : shape[2]]
    return x_hat.numpy(), bits


def ssim3d(a: np.ndarray, b: np.ndarray, data_range: float) -> float | None:
    """3D SSIM (scikit-image, 7-voxel window or the largest odd window that fits); None when a side < 3."""
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    if side < 3 or data_range <= 0:
        return None
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=data_range, win_size=win))


def _psnr(mse: float, peak: float) -> float | None:
    if peak <= 0:
        return None
    return float(10 * np.log10(peak**2 / max(mse, 1e-20)))


def evaluate_float(model: torch.nn.Module, crops: Sequence[np.ndarray], gain: float) -> dict[str, float]:
    """bpv, PSNR, SSIM and MSE of the float model on normalized crops (PSNR/SSIM averaged over crops)."""
    model.eval()
    bits, voxels, mses, psnrs, ssims = 0.0, 0, [], [], []
    for crop in crops:
        x_hat, b = reconstruct_float(model, crop, gain)
        mse = float(np.mean((x_hat.astype(np.float64) - crop) ** 2))
        bits += b
        voxels += crop.size
        mses.append(mse)
        psnrs.append(_psnr(mse, 2.0))
        s = ssim3d(crop, x_hat, 2.0)
        if s is not None:
            ssims.append(s)
    out = {"bpv": bits / max(voxels, 1), "mse": float(np.mean(mses)), "psnr": float(np.mean(psnrs)), "voxels": voxels}
    if ssims:
        out["ssim"] = float(np.mean(ssims))
    return out


def evaluate_codec(
    model_path: str | os.PathLike, volumes: Sequence, quality: int, *, crop: int | None = None
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """Compress and decompress each volume with the model file; ratio, bpv, PSNR, SSIM, max error.

    Args:
        model_path: A ``.mcw`` model file.
        volumes: ``medcodec.Volume`` objects in their original dtype.
        quality: Codec quality.
        crop: Evaluate a centred crop of this side instead of whole volumes.

    Returns:
        (metrics, slices): totals over the volumes (ratio = raw bytes / stream bytes,
        bpv = 8 x stream bytes / voxels; PSNR and SSIM averaged), and the middle slice of
        the first volume, original and decoded, for plots.
    """
    import medcodec
    from medcodec.volume import Volume

    raw = stream = voxels = 0
    psnrs, ssims, max_err, slices = [], [], 0.0, None
    for vol in volumes:
        if crop is not None:
            vol = Volume(center_crop(vol.array, crop), vol.spacing, vol.origin, vol.direction)
        data = medcodec.compress(vol, quality=quality, model=str(model_path))
        out = medcodec.decompress(data, model=str(model_path)).array
        a, b = vol.array.astype(np.float64), out.astype(np.float64)
        peak = float(a.max() - a.min())
        mse = float(np.mean((a - b) ** 2))
        raw, stream, voxels = raw + vol.array.nbytes, stream + len(data), voxels + a.size
        max_err = max(max_err, float(np.abs(a - b).max()))
        if (p := _psnr(mse, peak)) is not None:
            psnrs.append(p)
        if (s := ssim3d(a, b, peak)) is not None:
            ssims.append(s)
        if slices is None:
            z = a.shape[0] // 2
            slices = (vol.array[z].astype(np.float32), out[z].astype(np.float32))
    metrics = {
        "ratio": raw / max(stream, 1),
        "bpv": 8.0 * stream / max(voxels, 1),
        "max_abs_error": max_err,
        "voxels": voxels,
    }
    if psnrs:
        metrics["psnr"] = float(np.mean(psnrs))
    if ssims:
        metrics["ssim"] = float(np.mean(ssims))
    return metrics, slices
