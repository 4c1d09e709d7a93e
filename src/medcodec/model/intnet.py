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

The first layer's input is the latent ``y_hat = round(y * gain)``, which has
many channels: it is convolved in groups of :data:`FIRST_GROUP` input channels,
each group's output exact in float32 for ``|y_hat|`` up to the model's bound,
and the groups are summed in float64 (exact below 2**53). Its bias and
multiplier are derived from the gain by integer arithmetic (``gain = gain_num
/ 2**16``). The last layer returns the reconstruction in fixed point: units of
``2**-OUT_FRAC_BITS`` of the normalized intensity (range [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..format.fixedpoint import GAIN_ONE, OUT_FRAC_BITS
from .network import pixel_shuffle3d

__all__ = ["IntLayer", "IntSynthesis", "ACT_MAX", "SHIFT", "OUT_FRAC_BITS", "GAIN_ONE", "EXACT_LIMIT", "FIRST_GROUP"]

ACT_MAX = 255
SHIFT = 24
#: Every |partial sum| of a float32 convolution stays below this, so it is exact.
EXACT_LIMIT = 1 << 24
#: Input channels per convolution group of the first layer.
FIRST_GROUP = 16


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
        """Build the network, checking that the layers keep every convolution exact.

        Raises:
            ValueError: The layers do not form a valid integer synthesis transform.
        """
        _check_layers(layers)
        self.layers = layers
        self._weights = [torch.from_numpy(layer.weight.astype(np.float32)) for layer in layers]
        first = np.abs(layers[0].weight.astype(np.int64))
        self._first_l1 = max(
            int(first[:, c : c + FIRST_GROUP].reshape(first.shape[0], -1).sum(1).max())
            for c in range(0, first.shape[1], FIRST_GROUP)
        )

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
        if int(np.abs(bias).max()) >= 1 << 52:
            raise ValueError("first-layer bias out of range")
        return bias, mult, (EXACT_LIMIT - 1) // max(1, self._first_l1)

    @torch.no_grad()
    def __call__(self, y_hat: np.ndarray, gain_num: int) -> np.ndarray:
        """Decode integer latents (C, d, h, w) to the fixed-point reconstruction (8d, 8h, 8w), int64."""
        bias0, mult0, bound = self.first_layer_params(gain_num)
        if y_hat.size and int(np.abs(y_hat).max()) > bound:
            raise ValueError("latent outside the exact range of the first layer")
        x = self._first_conv(torch.from_numpy(y_hat.astype(np.float32))[None], bias0)
        x = _requantize(x, mult0, clamp=self.layers[0].relu)
        if self.layers[0].shuffle:
            x = pixel_shuffle3d(x)
        for i, layer in enumerate(self.layers[1:], start=1):
            acc = F.conv3d(x, self._weights[i], torch.from_numpy(layer.bias.astype(np.float32)), padding=1)
            x = _requantize(acc, layer.mult, clamp=layer.relu)
            if layer.shuffle:
                x = pixel_shuffle3d(x)
        return x[0, 0].to(torch.int64).numpy()

    def _first_conv(self, x: torch.Tensor, bias: np.ndarray) -> torch.Tensor:
        """First convolution: exact float32 groups summed in float64, then rounded once to float32."""
        w = self._weights[0]
        acc = torch.from_numpy(bias.astype(np.float64)).view(1, -1, 1, 1, 1).expand(1, w.shape[0], *x.shape[2:]).clone()
        for c in range(0, w.shape[1], FIRST_GROUP):
            acc += F.conv3d(x[:, c : c + FIRST_GROUP], w[:, c : c + FIRST_GROUP], padding=1).double()
        # float64 -> float32 is one correctly rounded conversion: the same everywhere.
        return acc.float()


def _check_layers(layers: list[IntLayer]) -> None:
    if not layers or layers[-1].relu or any(not layer.relu for layer in layers[:-1]):
        raise ValueError("integer synthesis needs ReLU on every layer but the last")
    cin = layers[0].weight.shape[1]
    for i, layer in enumerate(layers):
        w = layer.weight
        if w.ndim != 5 or w.shape[1] != cin or w.shape[2:] != (3, 3, 3):
            raise ValueError(f"layer {i} has weights of shape {w.shape}")
        if layer.bias.shape != (w.shape[0],) or layer.mult.shape != (w.shape[0],):
            raise ValueError(f"layer {i} bias or multiplier has the wrong shape")
        if (np.abs(w.astype(np.int64)) > 127).any() or (layer.mult <= 0).any() or (layer.mult >= 1 << 40).any():
            raise ValueError(f"layer {i} has weights or multipliers out of range")
        if i:
            worst = ACT_MAX * np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1) + np.abs(layer.bias)
            if (worst >= EXACT_LIMIT).any():
                raise ValueError(f"layer {i} could leave float32's exact integer range")
        cin = w.shape[0] // (8 if layer.shuffle else 1)
        if layer.shuffle and w.shape[0] % 8:
            raise ValueError(f"layer {i} cannot be pixel-shuffled")
    if cin != 1:
        raise ValueError("integer synthesis must end with one channel")


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
