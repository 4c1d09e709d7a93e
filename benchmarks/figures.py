"""PNG figures: rate-distortion curves per modality and original/decoded/error panels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .codecs import CODEC_ORDER, JPEG2000, MEDCODEC
from .measure import Record

__all__ = ["CLINICAL_RATIOS", "closest_to_ratio", "panel_figure", "rd_figure"]

#: Compression ratio of the slice panels, per modality (a common clinical operating point).
CLINICAL_RATIOS = {"CT": 10.0, "MR": 20.0, "other": 10.0}
_COLORS = {c: f"C{i}" for i, c in enumerate(CODEC_ORDER)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the benchmark machines
    import matplotlib.pyplot as plt

    return plt


def rd_figure(records: Sequence[Record], volumes: Sequence[str], metric: str, title: str, path: str | Path) -> Path:
    """One subplot per volume: ``metric`` ("psnr" or "ssim") against bpv (log scale).

    Lossy sweeps are lines; near-lossless points are dashed lines with square markers.
    """
    plt = _pyplot()
    from matplotlib import ticker

    n = len(volumes)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, volumes):
        for codec in CODEC_ORDER:
            for mode, style in (("lossy", "o-"), ("near-lossless", "s--")):
                pts = sorted(
                    (r.bpv, getattr(r, metric))
                    for r in records
                    if r.volume == name
                    and r.codec == codec
                    and r.mode == mode
                    and r.error is None
                    and getattr(r, metric) is not None
                    and math.isfinite(getattr(r, metric))
                )
                if pts:
                    ax.plot(
                        *zip(*pts),
                        style,
                        color=_COLORS[codec],
                        ms=3.5,
                        label=f"{codec}" + (" (near-lossless)" if mode != "lossy" else ""),
                    )
        ax.set_xscale("log")
        # Plain numbers on the major ticks only: minor log labels collide on short ranges.
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("bits per voxel")
        ax.set_ylabel("PSNR (dB, over max − min)" if metric == "psnr" else "3D SSIM")
        ax.set_title(name, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def closest_to_ratio(records: Sequence[Record], volume: str, codec: str, ratio: float) -> Record | None:
    """The lossy sweep point of ``codec`` on ``volume`` whose ratio is closest (in log) to ``ratio``."""
    pts = [r for r in records if r.volume == volume and r.codec == codec and r.mode == "lossy" and r.error is None]
    return min(pts, key=lambda r: abs(math.log(r.ratio / ratio)), default=None)


def panel_figure(
    volume: str,
    modality: str,
    original: np.ndarray,
    decoded: dict[str, np.ndarray],
    records: Sequence[Record],
    path: str | Path,
    codecs: Sequence[str] = (MEDCODEC, JPEG2000),
) -> Path | None:
    """Original / decoded / error of the middle slice, one row per codec, at the clinical ratio.

    Args:
        volume: Volume name.
        modality: Picks the ratio from :data:`CLINICAL_RATIOS`.
        original: The original middle slice.
        decoded: Setting key -> decoded middle slice.
        records: The run's records (to pick the sweep point and label it).
        path: Output PNG.
        codecs: Rows, in order; a codec without lossy points is left out.

    Returns:
        The path, or None when no codec had a point to show.
    """
    target = CLINICAL_RATIOS.get(modality, CLINICAL_RATIOS["other"])
    rows = []
    for codec in codecs:
        rec = closest_to_ratio(records, volume, codec, target)
        if rec is not None and rec.key in decoded:
            rows.append((rec, decoded[rec.key]))
    if not rows:
        return None
    plt = _pyplot()
    orig = original.astype(np.float64)
    lo, hi = np.percentile(orig, [0.5, 99.5])
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.1 * len(rows)), squeeze=False)
    for (rec, dec), ax in zip(rows, axes):
        err = dec.astype(np.float64) - orig
        # Each row on its own symmetric scale: a much worse codec would otherwise hide the
        # other's error pattern; the colour bars and titles carry the magnitudes.
        err_max = float(np.abs(err).max()) or 1.0
        ax[0].imshow(orig, cmap="gray", vmin=lo, vmax=hi)
        ax[0].set_title("original (middle slice)", fontsize=9)
        ax[1].imshow(dec, cmap="gray", vmin=lo, vmax=hi)
        ax[1].set_title(f"{rec.key}: {rec.ratio:.1f}:1, {rec.bpv:.3f} bpv, PSNR {rec.psnr:.1f} dB", fontsize=9)
        im = ax[2].imshow(err, cmap="seismic", vmin=-err_max, vmax=err_max)
        ax[2].set_title(f"error (decoded − original), own scale, max |e| {err_max:g}", fontsize=9)
        fig.colorbar(im, ax=ax[2], fraction=0.046)
        for a in ax:
            a.axis("off")
    fig.suptitle(f"{volume}: closest sweep point to {target:g}:1 ({modality})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)  # noise-like error maps compress badly: keep the PNGs small
    plt.close(fig)
    return path
