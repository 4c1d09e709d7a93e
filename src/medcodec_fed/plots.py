"""PNG plots of a federated run, drawn from its metrics.json (matplotlib, Agg backend).

* ``local_loss.png`` — local training loss per site per round;
* ``global_rd.png`` — PSNR and bits per voxel per round (mean over sites, and per site);
* ``ratio_per_site.png`` — final compression ratio (and PSNR) per site through the codec;
* ``slices.png`` — original vs reconstructed middle slice of each site's held-back volume;
* ``comparison.png`` — federated vs centralized vs local-only per site (when baselines ran).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["draw_all", "plot_comparison", "plot_global_rd", "plot_local_loss", "plot_ratio", "plot_slices"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_rounds(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _site_names(metrics: dict[str, Any]) -> list[str]:
    return [s["name"] for s in metrics["sites"]]


def plot_local_loss(metrics: dict[str, Any], path: Path) -> Path:
    """Local training loss of each site in the rounds it trained."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in _site_names(metrics):
        pts = [(r["round"], r["train"][name]["loss"]) for r in metrics["rounds"] if name in r.get("train", {})]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set(xlabel="round", ylabel="local rate-distortion loss", title="Local training loss per site")
    ax.set_yscale("log")
    _integer_rounds(ax)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_global_rd(metrics: dict[str, Any], path: Path) -> Path:
    """PSNR and bpv per round: the mean over sites (bold) and each site (thin)."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [r["round"] for r in metrics["rounds"]]

    def value(rec: dict[str, Any], key: str) -> float:  # a gap where a site did not report (Flower engine)
        v = rec.get(key) if rec is not None else None
        return np.nan if v is None else v

    for name in _site_names(metrics):
        a1.plot(rounds, [value(r["eval"].get(name), "psnr") for r in metrics["rounds"]], lw=0.8, alpha=0.6, label=name)
        a2.plot(rounds, [value(r["eval"].get(name), "bpv") for r in metrics["rounds"]], lw=0.8, alpha=0.6, label=name)
    a1.plot(rounds, [value(r["global"], "psnr") for r in metrics["rounds"]], "k-o", lw=2, ms=3, label="mean")
    a2.plot(rounds, [value(r["global"], "bpv") for r in metrics["rounds"]], "k-o", lw=2, ms=3, label="mean")
    q = metrics["config"]["quality"]
    a1.set(xlabel="round", ylabel="PSNR (dB)", title=f"Held-back PSNR per round (quality {q})")
    a2.set(xlabel="round", ylabel="bits per voxel", title=f"Held-back rate per round (quality {q})")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    _integer_rounds(a1, a2)
    a1.legend(fontsize=7)
    return _save(fig, path)


def plot_ratio(metrics: dict[str, Any], path: Path) -> Path | None:
    """Final compression ratio and PSNR per site (None when there is no final evaluation)."""
    final = metrics.get("final") or {}
    if not final:
        return None
    plt = _pyplot()
    names = [n for n in _site_names(metrics) if n in final]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    bars = ax.bar(names, [final[n]["ratio"] for n in names], color="tab:blue")
    for b, n in zip(bars, names):
        if "psnr" in final[n]:
            ax.annotate(
                f"{final[n]['psnr']:.1f} dB",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set(
        ylabel="compression ratio (raw / stream)",
        title=f"Final model through the codec, quality {metrics['config']['quality']}",
    )
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_slices(slices: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path | None:
    """Original (top) and decoded (bottom) middle slice of each site's first held-back volume."""
    if not slices:
        return None
    plt = _pyplot()
    names = list(slices)
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.4), squeeze=False)
    for j, name in enumerate(names):
        orig, recon = slices[name]
        lo, hi = float(orig.min()), float(orig.max())
        for i, (img, label) in enumerate(((orig, "original"), (recon, "decoded"))):
            axes[i, j].imshow(img, cmap="gray", vmin=lo, vmax=hi)
            axes[i, j].set_title(f"{name}\n{label}" if i == 0 else label, fontsize=7)
            axes[i, j].axis("off")
    return _save(fig, path)


def plot_comparison(metrics: dict[str, Any], path: Path) -> Path | None:
    """PSNR and bpv per site of the federated, centralized and local-only models."""
    base = metrics.get("baselines")
    if not base:
        return None
    plt = _pyplot()
    names = _site_names(metrics)
    kinds = [("federated", "tab:blue"), ("centralized", "tab:green"), ("local_only", "tab:orange")]
    x = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(names)), 4))
    for k, (kind, color) in enumerate(kinds):
        vals = base.get(kind, {})
        for ax, key in ((a1, "psnr"), (a2, "bpv")):
            ax.bar(
                x + (k - 1) * 0.27,
                [vals.get(n, {}).get(key, np.nan) for n in names],
                0.27,
                color=color,
                label=kind.replace("_", "-"),
            )
    a1.set(ylabel="PSNR (dB)", title="Federated vs centralized vs local-only: PSNR")
    a2.set(ylabel="bits per voxel", title="... and rate at the same quality")
    for a in (a1, a2):
        a.set_xticks(x, names, rotation=30, fontsize=7)
        a.grid(axis="y", alpha=0.3)
    a1.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def draw_all(
    metrics: dict[str, Any], out: Path, *, slices: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> list[Path]:
    """Draw every plot the metrics allow into ``out``; returns the written files."""
    out = Path(out)
    drawn = [
        plot_local_loss(metrics, out / "local_loss.png"),
        plot_global_rd(metrics, out / "global_rd.png"),
        plot_ratio(metrics, out / "ratio_per_site.png"),
        plot_slices(slices or {}, out / "slices.png"),
        plot_comparison(metrics, out / "comparison.png"),
    ]
    return [p for p in drawn if p is not None]
