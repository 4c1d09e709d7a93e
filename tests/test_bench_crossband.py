"""The cross-band predictor: integer-exact inference and its conversion from the float network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import crossband_int as cb
from benchmarks import crossband_train as tr
from tests.conftest import synthetic


def _reference(net: cb.CrossBandNet, low: np.ndarray) -> np.ndarray:
    """The same net in Python integers (object arrays): no float, no overflow."""
    out = np.empty((3, *low.shape), np.int64)
    for k in range(low.shape[0]):
        f = cb.neighbourhoods(np.clip(low[k], -cb.LOW_LIMIT, cb.LOW_LIMIT)).astype(object)
        f = f - f[:, cb.TAPS // 2 : cb.TAPS // 2 + 1]
        x = np.clip((f * net.input_mult + (1 << (cb.SHIFT - 1))) >> cb.SHIFT, -cb.INPUT_LIMIT, cb.INPUT_LIMIT)
        for i, layer in enumerate(net.layers):
            acc = x.dot(layer.weight.T.astype(object)) + layer.bias.astype(object)
            x = (acc * layer.mult.astype(object) + (1 << (layer.shift - 1))) >> layer.shift
            if i < len(net.layers) - 1:
                x = np.clip(x, 0, cb.ACT_LIMIT)
        out[:, k] = x.T.astype(np.int64).reshape(3, *low.shape[1:])
    return out


def _model(seed: int = 0, hidden: tuple[int, ...] = (8, 8)) -> tr.FloatCrossBand:
    torch.manual_seed(seed)
    return tr.FloatCrossBand(tr._network(hidden), 4000.0, np.array([300.0, 250.0, 40.0]))


def _low(seed: int = 0) -> np.ndarray:
    low, _ = tr.level_one(synthetic((3, 40, 36), seed=seed).astype(np.int64))
    return low


def test_integer_inference_equals_exact_integer_arithmetic():
    net = tr.to_integer(_model())
    low = _low()
    assert np.array_equal(net.predict(low), _reference(net, low))


def test_integer_inference_is_exact_at_the_input_limits():
    """Values at the low band's clipping limit, alternating in sign: the largest sums there are."""
    net = tr.to_integer(_model(1))
    low = np.where(np.indices((2, 9, 11)).sum(0) % 2 == 0, cb.LOW_LIMIT, -cb.LOW_LIMIT).astype(np.int64) * 3
    got = net.predict(low)
    assert np.array_equal(got, _reference(net, low))
    assert np.abs(got).max() > 0


def test_the_integer_net_follows_the_float_one():
    model = _model(2, (16, 16))
    net = tr.to_integer(model)
    low = _low(3)
    f = cb.centred_neighbourhoods(low[0])
    with torch.no_grad():
        want = model(torch.from_numpy(f.astype(np.float32))).double().numpy().T.reshape(3, *low.shape[1:])
    got = net.predict(low)[:, 0]
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max() + 2


def test_training_lowers_the_l1_error_of_the_bands():
    """Discs of constant values: the detail at their edges follows from the low band."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:64, :64]
    x = np.zeros((6, 64, 64), np.int64)
    for k in range(6):
        for cy, cx, r, v in zip(*rng.integers([0, 0, 4, -900], [64, 64, 20, 900], (8, 4)).T):
            x[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = v
    f, y = tr.level_one_pairs(x, 20_000, np.random.default_rng(0))

    def error(model: tr.FloatCrossBand) -> float:
        with torch.no_grad():
            return float(np.abs(model(torch.from_numpy(f.astype(np.float32))).numpy() - y).mean())

    untrained, trained = (error(tr.fit(f, y, (8,), iterations=n, batch=1024)) for n in (0, 200))
    assert trained < 0.9 * untrained


@pytest.mark.parametrize(
    "change",
    [
        {"weight": np.full((3, cb.TAPS), cb.WEIGHT_LIMIT + 1)},
        {"bias": np.full(3, cb.BIAS_LIMIT + 1)},
        {"mult": np.full(3, -1)},
        {"shift": 0},
        {"bias": np.zeros(2, np.int64)},
    ],
)
def test_a_layer_out_of_its_limits_is_refused(change):
    layer = {
        "weight": np.ones((3, cb.TAPS), np.int64),
        "bias": np.zeros(3, np.int64),
        "mult": np.ones(3, np.int64),
        "shift": 4,
    }
    layer.update(change)
    with pytest.raises(ValueError):
        cb.IntLinear(**layer)


def test_a_net_of_the_wrong_shape_is_refused():
    one = cb.IntLinear(np.ones((4, cb.TAPS), np.int64), np.zeros(4, np.int64), np.ones(4, np.int64), 4)
    with pytest.raises(ValueError, match="49 inputs to 3 outputs"):
        cb.CrossBandNet(1 << 10, (one,))
