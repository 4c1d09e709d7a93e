"""Integer-exact cross-band prediction: a level's three high bands predicted from its low band.

A small network (7×7 low-band neighbourhood → hidden layers with ReLU → the HL, LH and HH
coefficients at that position) guesses the detail a decoder is about to add from the
coarser image it already holds; the coder then codes only what the guess missed. Since the
guess is part of every decoder's reconstruction, it must be the same integers everywhere, so
the network computes only with integers:

* the input is the neighbourhood less its centre, rescaled by an integer multiplier and
  clipped to ±:data:`INPUT_LIMIT`;
* each layer is an integer matrix product, run in float64 on integers whose every partial sum
  stays below 2**53 (checked on loading: ``|w| ≤`` :data:`WEIGHT_LIMIT`), hence exact in any
  summation order; the product is then rescaled in int64 as ``(acc + b) * mult >> SHIFT``
  rounded to nearest, and hidden values are clipped to [0, :data:`ACT_LIMIT`];
* the last layer's output is in the coder's coefficient units.

numpy only, as a decoder's part would be. The float network and its training are in
``benchmarks.crossband_train``; ``benchmarks.crossband_level1`` measures both in the coder's
closed loop (ATTEMPTS.md, L5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RADIUS", "TAPS", "CrossBandNet", "IntLinear", "neighbourhoods", "centred_neighbourhoods"]

RADIUS = 3
TAPS = (2 * RADIUS + 1) ** 2
SHIFT = 24
MAX_SHIFT = 62
INPUT_LIMIT = 1 << 15
ACT_LIMIT = 1 << 15
WEIGHT_LIMIT = 1 << 14
MULT_LIMIT = 1 << 24
BIAS_LIMIT = 1 << 36
#: The low band's values are clipped to this before rescaling (int64 headroom for the multiplier).
LOW_LIMIT = 1 << 30


@dataclass(frozen=True)
class IntLinear:
    """One integer layer: ``out = round((x @ weight.T + bias) * mult / 2**shift)``.

    Attributes:
        weight: (out, in) int64, ``|w| ≤ WEIGHT_LIMIT``.
        bias: (out,) int64, ``|b| ≤ BIAS_LIMIT``.
        mult: (out,) int64 in [0, MULT_LIMIT].
        shift: in [1, MAX_SHIFT].
    """

    weight: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: int

    def __post_init__(self) -> None:
        w, b, m = self.weight, self.bias, self.mult
        if w.ndim != 2 or b.shape != (w.shape[0],) or m.shape != (w.shape[0],):
            raise ValueError("a layer's weight, bias and multipliers disagree in shape")
        if np.abs(w).max(initial=0) > WEIGHT_LIMIT or np.abs(b).max(initial=0) > BIAS_LIMIT:
            raise ValueError("a layer's weights or biases exceed their limits")
        if m.min(initial=0) < 0 or m.max(initial=0) > MULT_LIMIT:
            raise ValueError("a layer's multipliers exceed their limit")
        if not 1 <= self.shift <= MAX_SHIFT:
            raise ValueError("a layer's shift is out of range")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # |x| ≤ 2**15 and |w| ≤ 2**14 over at most 2**8 inputs: every partial sum is below 2**37,
        # exact in float64 whatever the order; with the bias below 2**38, times mult below 2**62.
        acc = (x.astype(np.float64) @ self.weight.T.astype(np.float64)).astype(np.int64) + self.bias
        return (acc * self.mult + (1 << (self.shift - 1))) >> self.shift


@dataclass(frozen=True)
class CrossBandNet:
    """The integer predictor of one level: input multiplier and layers (ReLU between them)."""

    input_mult: int
    layers: tuple[IntLinear, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.input_mult <= MULT_LIMIT:
            raise ValueError("the input multiplier exceeds its limit")
        sizes = [TAPS] + [layer.weight.shape[0] for layer in self.layers]
        if not self.layers or sizes[-1] != 3 or max(sizes) > 256:
            raise ValueError("a cross-band net maps 49 inputs to 3 outputs through at most 256 units")
        if any(layer.weight.shape[1] != n for layer, n in zip(self.layers, sizes)):
            raise ValueError("consecutive layers disagree in size")

    def predict(self, low: np.ndarray) -> np.ndarray:
        """The three high bands (int64, (3, *low.shape)) predicted at every position of ``low``."""
        z, h, w = low.shape
        out = np.empty((3, z, h, w), np.int64)
        for k in range(z):  # a slice at a time: 49 values per position stay small in memory
            x = self._inputs(low[k])
            for layer in self.layers[:-1]:
                x = np.clip(layer(x), 0, ACT_LIMIT)
            out[:, k] = self.layers[-1](x).T.reshape(3, h, w)
        return out

    def _inputs(self, plane: np.ndarray) -> np.ndarray:
        f = centred_neighbourhoods(np.clip(plane, -LOW_LIMIT, LOW_LIMIT))
        return np.clip((f * self.input_mult + (1 << (SHIFT - 1))) >> SHIFT, -INPUT_LIMIT, INPUT_LIMIT)


def neighbourhoods(plane: np.ndarray) -> np.ndarray:
    """The 7×7 neighbourhood of every position of a 2D array (edges repeated), (h*w, 49) int64."""
    h, w = plane.shape
    r = RADIUS
    p = np.pad(plane.astype(np.int64), r, mode="edge")
    f = np.empty((h, w, TAPS), np.int64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            f[:, :, i * (2 * r + 1) + j] = p[i : i + h, j : j + w]
    return f.reshape(h * w, TAPS)


def centred_neighbourhoods(plane: np.ndarray) -> np.ndarray:
    """:func:`neighbourhoods` less each one's centre: what the predictor sees (it ignores the local mean)."""
    f = neighbourhoods(plane)
    return f - f[:, TAPS // 2 : TAPS // 2 + 1]
