"""The integer-exact synthesis transform that decoding runs.

Every decoder output that later bits depend on (the lossy reconstruction is the
predictor of the residual layer) must be identical on every machine. This
network therefore computes only with integers:

* weights and biases are integers; activations are integers in [0, 255];
* convolutions run in float32 on those integers. That is exact whatever order
  the backend sums in, because each output channel's weights are scaled so that
  ``255 * sum(|w|) + |b| < 2**24``: every partial sum is an integer below 2**24;
* rescaling between layers multiplies by a per-channel constant and rounds
  down, in float32: each of those elementwise IEEE-754 operations is correctly
  rounded, hence identical on every machine.

The first layer's input is the latent ``y_hat = round(y * gain)``; its bias and
multiplier are derived from the gain by integer arithmetic (``gain = gain_num
/ 2**16``). The last layer returns the reconstruction in fixed point: units of
``2**-OUT_FRAC_BITS`` of the normalized intensity (range [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .network import pixel_shuffle3d

__all__ = ["IntLayer", "IntSynthesis", "ACT_MAX", "SHIFT", "OUT_FRAC_BITS", "GAIN_ONE", "EXACT_LIMIT"]

ACT_MAX = 255
SHIFT = 24
OUT_FRAC_BITS = 12
GAIN_ONE = 1 << 16
#: Every |partial sum| of a float32 convolution stays below this, so it is exact.
EXACT_LIMIT = 1 << 24


@dataclass(frozen=True)
class IntLayer:
    """One integer synthesis layer.

    Attributes:
        weight: Integer weights (cout, cin, 3, 3, 3), int32.
        bias: Integer bias (cout,), int64. For the first layer: the bias at gain 1
            in units of 2**-16 (see :meth:`IntSynthesis.first_layer_params`).
        mult: Rescaling multipliers (cout,), int64, applied as ``floor(acc * mult / 2**SHIFT + 1/2)``.
            For the first layer: the multiplier at gain 1, divided by the gain when decoding.
        shuffle: Whether a 2x 3D pixel shuffle follows.
        relu: Whether the output is clamped to [0, ACT_MAX] (else it is the final output).
    """

    weight: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shuffle: bool
    relu: bool


class IntSynthesis:
    """Integer-exact synthesis transform built from :class:`IntLayer` s."""

    def __init__(self, layers: list[IntLayer]) -> None:
        self.layers = layers
        self._weights = [torch.from_numpy(layer.weight.astype(np.float32)) for layer in layers]
        first = layers[0].weight.astype(np.int64)
        self._first_l1 = np.abs(first).reshape(first.shape[0], -1).sum(1)

    @property
    def latent_channels(self) -> int:
        return int(self.layers[0].weight.shape[1])

    def first_layer_params(self, gain_num: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Bias, multiplier and latent bound of the first layer at gain ``gain_num / 2**16``.

        The bound is the largest ``|y_hat|`` for which the first convolution is exact.
        """
        layer = self.layers[0]
        bias = _div_round(layer.bias * gain_num, GAIN_ONE * GAIN_ONE)
        mult = _div_round(layer.mult * GAIN_ONE, np.int64(gain_num))
        room = EXACT_LIMIT - 1 - int(np.abs(bias).max())
        bound = max(0, room // max(1, int(self._first_l1.max())))
        return bias, mult, bound

    @torch.no_grad()
    def __call__(self, y_hat: np.ndarray, gain_num: int) -> np.ndarray:
        """Decode integer latents (C, d, h, w) to the fixed-point reconstruction (8d, 8h, 8w), int64."""
        bias0, mult0, bound = self.first_layer_params(gain_num)
        if y_hat.size and int(np.abs(y_hat).max()) > bound:
            raise ValueError("latent outside the exact range of the first layer")
        x = torch.from_numpy(y_hat.astype(np.float32))[None]
        for i, layer in enumerate(self.layers):
            bias = bias0 if i == 0 else layer.bias
            mult = mult0 if i == 0 else layer.mult
            acc = F.conv3d(x, self._weights[i], torch.from_numpy(bias.astype(np.float32)), padding=1)
            x = _requantize(acc, mult, clamp=layer.relu)
            if layer.shuffle:
                x = pixel_shuffle3d(x)
        return x[0, 0].to(torch.int64).numpy()


def _div_round(num: np.ndarray, den: int | np.int64) -> np.ndarray:
    """Round-half-up integer division of int64 arrays (exact, no floats)."""
    num = np.asarray(num, dtype=np.int64)
    return np.floor_divide(2 * num + den, 2 * np.int64(den))


def _requantize(acc: torch.Tensor, mult: np.ndarray, *, clamp: bool) -> torch.Tensor:
    """``floor(acc * mult / 2**SHIFT + 1/2)`` per channel, clamped to [0, ACT_MAX] for hidden layers.

    Runs in place in float32. ``acc`` holds exact integers; the scale ``mult / 2**SHIFT`` is
    converted to float32 once, and each IEEE-754 multiply, add and floor is correctly
    rounded, so the result is the same on every machine (no fused or extended-precision
    operation is involved: each step is its own elementwise kernel).
    """
    scale = torch.from_numpy((mult.astype(np.float64) / (1 << SHIFT)).astype(np.float32)).view(1, -1, 1, 1, 1)
    acc.mul_(scale).add_(0.5).floor_()
    if clamp:
        acc.clamp_(0, ACT_MAX)
    return acc
