"""Centralized training of a medcodec autoencoder on real volumes, resumable.

Usage::

    python -m medcodec.training --out runs/mc3d-s --steps 20000      # starts or resumes
    python -m medcodec.training --out runs/mc3d-s --export weights/    # writes the integer model file

Training draws random patches from the ``train`` split of the data folder
(:func:`medcodec.training.datasets.find_data_dir`), normalized per volume to [-1, 1] by
its min and max, with a random latent gain per patch so that one model serves
every quality. A checkpoint is written every ``--ckpt-every`` steps; running
the same command again continues from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..coding import intensity
from ..errors import CheckpointError
from ..model.network import ARCHITECTURES, Autoencoder
from .datasets import find_data_dir, load_manifest

__all__ = [
    "PatchSampler",
    "TrainConfig",
    "load_checkpoint",
    "normalize_volume",
    "random_crop",
    "rd_loss",
    "train",
    "main",
]

GAIN_RANGE = (0.25, 16.0)
#: Distortion weight: loss = RD_WEIGHT * gain^2 * MSE + bits per voxel (MSE on [-1, 1] data).
RD_WEIGHT = 5000.0


def normalize_volume(array: np.ndarray) -> np.ndarray:
    """Map a volume to float32 in [-1, 1] by its own min and max: the codec's intensity map."""
    return intensity.normalize(array, float(array.min()), float(array.max()))


class PatchSampler:
    """Random 3D patches from a list of normalized volumes, reproducible by step number."""

    def __init__(self, volumes: list[np.ndarray], patch: int, seed: int) -> None:
        self.volumes = volumes
        self.patch = patch
        self.seed = seed
        sizes = np.array([v.size for v in volumes], dtype=np.float64)
        self.weights = np.sqrt(sizes) / np.sqrt(sizes).sum()

    def batch(self, step: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        out = np.empty((size, 1, self.patch, self.patch, self.patch), dtype=np.float32)
        for i in range(size):
            for _attempt in range(4):
                v = self.volumes[rng.choice(len(self.volumes), p=self.weights)]
                p = random_crop(v, self.patch, rng)
                if p.std() > 0.01:
                    break
            for axis in (1, 2):
                if rng.random() < 0.5:
                    p = np.flip(p, axis)
            out[i, 0] = p
        return out


def random_crop(v: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size``-cube of ``v`` at a random position (a view where ``v`` is large enough)."""
    # Volumes thinner than the patch are edge-padded, as the codec pads tiles.
    pad = [(0, max(0, size - s)) for s in v.shape]
    if any(p[1] for p in pad):
        v = np.pad(v, pad, mode="edge")
    starts = [int(rng.integers(0, s - size + 1)) for s in v.shape]
    return v[starts[0] : starts[0] + size, starts[1] : starts[1] + size, starts[2] : starts[2] + size]


def rd_loss(model: Autoencoder, x: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Rate-distortion loss of one batch and its metrics (mse, bits per voxel)."""
    x_hat, likelihood = model(x, gain)
    mse = ((x_hat - x) ** 2).flatten(1).mean(1)
    bpv = -torch.log2(likelihood).flatten(1).sum(1) / x[0].numel()
    loss = (RD_WEIGHT * gain**2 * mse + bpv).mean()
    return loss, {"loss": loss.item(), "mse": mse.mean().item(), "bpv": bpv.mean().item()}


def sample_gains(step: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, step, 1])
    lo, hi = np.log(GAIN_RANGE[0]), np.log(GAIN_RANGE[1])
    return torch.from_numpy(np.exp(rng.uniform(lo, hi, size)).astype(np.float32))


def make_optimizer(model: Autoencoder, lr: float) -> torch.optim.Optimizer:
    prior = list(model.prior.parameters())
    ids = {id(p) for p in prior}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": rest, "lr": lr}, {"params": prior, "lr": lr * 5}])


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint or state dict that holds only tensors, numbers, strings and containers.

    ``torch.load(weights_only=True)``: unpickling never calls anything the file names,
    so a checkpoint from elsewhere cannot run code here. The checkpoints :func:`train`
    writes (and the federated engine's) are plain data of this kind; they always were.

    Raises:
        CheckpointError: The file needs more than plain data (e.g. a pickled object), or is
            not a readable torch file.
        OSError: It cannot be opened (FileNotFoundError when it does not exist).
    """
    import pickle
    import re

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, the very thing not to do: pass on the cause only.
        wanted = re.search(r"GLOBAL ([\w.]+)", str(exc))  # a class or function unpickling would call
        if wanted:
            raise CheckpointError(
                f"{path}: refused: it holds more than tensors, numbers and strings (it names {wanted[1]})"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint (not a pickle of plain data)") from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError... for a file that is not its own
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the command line's options, :func:`main`).

    Attributes:
        out: Run folder: ``checkpoint.pt`` and ``log.jsonl``.
        data: Data folder with ``manifest.json`` (None: ``MEDCODEC_DATA`` or ``../shared/data``).
        arch: Architecture name (:data:`medcodec.model.network.ARCHITECTURES`).
        steps: Optimizer steps in all (a resumed run stops there too).
        batch: Patches per step.
        patch: Patch side in voxels.
        lr: Adam learning rate (the entropy prior's is 5 times larger).
        seed: Seed of the weights, the patches and the gains.
        threads: torch threads.
        ckpt_every: Steps between checkpoints.
    """

    out: str
    data: str | None = None
    arch: str = "mc3d-s"
    steps: int = 20000
    batch: int = 8
    patch: int = 48
    lr: float = 2e-4
    seed: int = 0
    threads: int = 2
    ckpt_every: int = 250


def train(args: TrainConfig) -> Path:
    """Run (or resume) training; returns the checkpoint path."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    arch = ARCHITECTURES[args.arch]
    torch.manual_seed(args.seed)
    model = Autoencoder(arch)
    opt = make_optimizer(model, args.lr)
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt["elapsed_s"]
        print(f"resumed from step {step} ({elapsed / 3600:.2f} h so far)", flush=True)
    data_dir = Path(args.data) if args.data else find_data_dir()
    entries = load_manifest(data_dir, split="train")
    from ..files.images import read

    volumes = [normalize_volume(read(e.path).array) for e in entries]
    sampler = PatchSampler(volumes, args.patch, args.seed)
    log = (out / "log.jsonl").open("a")
    t0 = time.time()
    while step < args.steps:
        lr_scale = 0.1 if step >= int(args.steps * 0.85) else 1.0
        for i, group in enumerate(opt.param_groups):
            group["lr"] = args.lr * (5 if i else 1) * lr_scale
        torch.manual_seed(args.seed * 1_000_003 + step)
        x = torch.from_numpy(sampler.batch(step, args.batch))
        gain = sample_gains(step, args.batch, args.seed)
        loss, metrics = rd_loss(model, x, gain)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            metrics.update(step=step, elapsed_s=round(elapsed + time.time() - t0, 1))
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            print(json.dumps(metrics), flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            _save(ckpt_path, model, opt, step, elapsed + time.time() - t0, args)
    return ckpt_path


def _save(
    path: Path, model: Autoencoder, opt: torch.optim.Optimizer, step: int, elapsed: float, args: TrainConfig
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed_s": elapsed,
            "arch": args.arch,
            # Plain values only: the checkpoint loads with weights_only=True.
            "config": dataclasses.asdict(args),
        },
        tmp,
    )
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m medcodec.training", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.jsonl)")
    p.add_argument("--data", help="data folder with manifest.json (default: MEDCODEC_DATA or ../shared/data)")
    d = TrainConfig(out="")  # the defaults, defined once
    p.add_argument("--arch", default=d.arch, choices=sorted(ARCHITECTURES))
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--patch", type=int, default=d.patch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--export", metavar="DIR", help="only export the checkpoint to an integer model file in DIR")
    args = p.parse_args(argv)
    if args.export:
        from .export import export_checkpoint

        path = export_checkpoint(Path(args.out) / "checkpoint.pt", Path(args.export), data=args.data)
        print(path)
        return
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train(TrainConfig(**settings))


if __name__ == "__main__":
    main()
