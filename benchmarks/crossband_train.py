"""Training of the cross-band predictor and its conversion to the integer net a decoder would run.

The float network (``TAPS → hidden → 3``, ReLU) sees the transform coder's own level-1
decomposition (in-plane 9/7 lifting of ``(x - mid) << PRECISION_BITS``): the 7×7 low band
around a position less its centre, divided by the training data's mean magnitude, and
predicts the HL, LH and HH coefficients there in units of each band's mean magnitude. It is
trained with an L1 loss (the coefficients' errors are Laplacian-like). :func:`to_integer`
turns it into :class:`benchmarks.crossband_int.CrossBandNet`: weights rounded to
:data:`~benchmarks.crossband_int.WEIGHT_LIMIT`, activations in units of 2**-ACT_BITS, the
scales folded into the integer multipliers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks import crossband_int as cb
from medcodec.coding import lifting
from medcodec.coding.transform import PRECISION_BITS

__all__ = ["FloatCrossBand", "level_one_pairs", "fit", "to_integer"]

#: Fraction bits of the integer hidden activations.
ACT_BITS = 8
#: Fraction bits of the integer input, at most (fewer where the input scale is small).
INPUT_BITS = 6
#: The layers' multipliers are rounded to about this many units (their relative precision).
MULT_PRECISION = 1 << 20


def level_one(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The coder's level-1 low band and its three high bands (HL, LH, HH in the coder's band
    order) of an integer volume, at ``z_levels = 0``."""
    lo, hi = int(x.min()), int(x.max())
    p = lifting.plan(x.shape, 0)
    c = (x.astype(np.int64) - (lo + hi) // 2) << PRECISION_BITS
    for a in p.axes(0):
        lifting._split(c, a)
    bands = [b for b in p.bands if b.level == 0]
    h, w = ((n + 1) // 2 for n in x.shape[1:])
    return c[:, :h, :w].copy(), [c[b.block].copy() for b in bands]


def level_one_pairs(x: np.ndarray, per_volume: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_volume`` positions of ``x``'s level 1: (centred 7×7 low band, the 3 high
    coefficients), int64."""
    low, bands = level_one(x)
    h, w = (min(b.shape[k] for b in bands) for k in (1, 2))
    take = max(1, per_volume // x.shape[0])
    fs, ys = [], []
    for k in range(x.shape[0]):
        f = cb.centred_neighbourhoods(low[k])
        f = f.reshape(low.shape[1], low.shape[2], cb.TAPS)[:h, :w].reshape(-1, cb.TAPS)
        y = np.stack([b[k, :h, :w].ravel() for b in bands], -1)
        at = rng.choice(f.shape[0], min(take, f.shape[0]), replace=False)
        fs.append(f[at])
        ys.append(y[at])
    return np.concatenate(fs), np.concatenate(ys)


@dataclass
class FloatCrossBand:
    """The float predictor: a ReLU network and its input and per-band output scales."""

    net: torch.nn.Sequential
    in_scale: float
    out_scale: np.ndarray  # (3,)

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f / self.in_scale) * torch.as_tensor(self.out_scale, dtype=f.dtype)


def _network(hidden: tuple[int, ...]) -> torch.nn.Sequential:
    sizes = [cb.TAPS, *hidden, 3]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def fit(
    features: np.ndarray,
    targets: np.ndarray,
    hidden: tuple[int, ...] = (32, 32),
    iterations: int = 3000,
    batch: int = 4096,
    seed: int = 0,
) -> FloatCrossBand:
    """Train the float predictor on (centred neighbourhood, coefficients) pairs with an L1 loss."""
    torch.manual_seed(seed)
    xs = torch.from_numpy(features.astype(np.float32))
    ys = torch.from_numpy(targets.astype(np.float32))
    model = FloatCrossBand(_network(hidden), float(xs.abs().mean()) or 1.0, np.maximum(ys.abs().mean(0).numpy(), 1e-3))
    opt = torch.optim.Adam(model.net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    g = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        at = torch.randint(0, xs.shape[0], (batch,), generator=g)
        loss = (model(xs[at]) - ys[at]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def _bits(limit: int, values: np.ndarray) -> int:
    """The most fraction bits with which ``values`` rounded stay within ``limit``."""
    peak = float(np.abs(values).max(initial=0.0))
    return int(math.floor(math.log2(limit / peak))) if peak > 0 else 0


def to_integer(model: FloatCrossBand) -> cb.CrossBandNet:
    """The integer net computing ``model`` to within its rounding."""
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    # Input in units of 2**-in_bits of the float net's input (the neighbourhood / in_scale).
    in_bits = min(INPUT_BITS, int(math.floor(math.log2(cb.MULT_LIMIT * model.in_scale / 2.0**cb.SHIFT))))
    input_mult = round(2.0 ** (cb.SHIFT + in_bits) / model.in_scale)
    layers = []
    x_bits = in_bits
    for i, lin in enumerate(linears):
        w = lin.weight.detach().double().numpy()
        b = lin.bias.detach().double().numpy()
        w_bits = _bits(cb.WEIGHT_LIMIT, w)
        acc_bits = w_bits + x_bits
        # What one unit of the accumulator is worth at the output: 2**ACT_BITS per unit of a hidden
        # activation, each band's scale (coefficient units) at the last layer.
        last = i == len(linears) - 1
        gain = model.out_scale * 2.0**-acc_bits if last else np.full(w.shape[0], 2.0 ** (ACT_BITS - acc_bits))
        shift = min(cb.MAX_SHIFT, _bits(MULT_PRECISION, gain))  # multipliers below 2**20
        layers.append(
            cb.IntLinear(
                np.round(w * 2.0**w_bits).astype(np.int64),
                np.clip(np.round(b * 2.0**acc_bits), -cb.BIAS_LIMIT, cb.BIAS_LIMIT).astype(np.int64),
                np.clip(np.round(gain * 2.0**shift), 0, cb.MULT_LIMIT).astype(np.int64),
                shift,
            )
        )
        x_bits = ACT_BITS
    return cb.CrossBandNet(int(input_mult), tuple(layers))
