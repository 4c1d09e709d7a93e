"""The site-boundary rule: only parameter tensors and named scalars can be put into a message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medcodec_fed.messages import METRIC_NAMES, GlobalModel, MessageError, SiteEvaluation, SiteUpdate, parameter_spec

ARCH = "mc3d-xs"


def _params() -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in parameter_spec(ARCH).items()}


def _update(**overrides) -> SiteUpdate:
    kwargs = dict(site="a", arch=ARCH, round=1, parameters=_params(), num_samples=8, metrics={"loss": 1.0})
    kwargs.update(overrides)
    return SiteUpdate(**kwargs)


def test_a_valid_update_is_a_frozen_read_only_copy():
    params = _params()
    update = _update(parameters=params)
    params["g_a.0.bias"][:] = 5  # the sender's later edits do not reach the message
    assert not update.parameters["g_a.0.bias"].any()
    with pytest.raises(ValueError):
        update.parameters["g_a.0.bias"][0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        update.num_samples = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        update.parameters["extra"] = np.zeros(3)  # type: ignore[index]


def test_no_field_exists_for_anything_but_parameters_counts_and_metrics():
    names = {f.name for f in dataclasses.fields(SiteUpdate)}
    assert names == {"site", "arch", "round", "parameters", "num_samples", "metrics"}
    with pytest.raises(TypeError):
        _update(payload=np.zeros((16, 24, 24)))


def test_a_volume_under_an_extra_name_is_refused():
    params = _params()
    params["volume"] = np.zeros((16, 24, 24), np.float32)
    with pytest.raises(MessageError, match="not a parameter"):
        _update(parameters=params)


def test_a_volume_shaped_array_under_a_real_name_is_refused():
    params = _params()
    params["g_a.0.weight"] = np.zeros((16, 24, 24), np.float32)
    with pytest.raises(MessageError, match="shape"):
        _update(parameters=params)


@pytest.mark.parametrize("value", [np.zeros((8, 1, 5, 5, 5), np.int16), np.zeros((8, 1, 5, 5, 5), np.float64)])
def test_a_parameter_of_another_dtype_is_refused(value):
    params = _params()
    params["g_a.0.weight"] = value
    with pytest.raises(MessageError, match="dtype"):
        _update(parameters=params)


def test_non_arrays_are_refused():
    params = _params()
    params["g_a.0.bias"] = list(range(8))  # type: ignore[assignment]
    with pytest.raises(MessageError, match="numpy array"):
        _update(parameters=params)


@pytest.mark.parametrize(
    "metrics",
    [
        {"voxels_of_slice_3": 1.0},  # an unknown name
        {"loss": np.zeros((16, 24, 24))},  # an array disguised as a metric
        {"loss": [1.0, 2.0]},
        {"loss": "1.0"},
    ],
)
def test_metrics_must_be_named_scalars(metrics):
    with pytest.raises(MessageError):
        _update(metrics=metrics)


def test_site_names_cannot_carry_data():
    with pytest.raises(MessageError):
        _update(site="x" * 500)
    with pytest.raises(MessageError):
        _update(site="a b\n")


def test_counts_are_non_negative_integers():
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(MessageError):
            _update(num_samples=bad)


def test_unknown_architecture_is_refused():
    with pytest.raises(MessageError, match="unknown architecture"):
        _update(arch="nope")


def test_global_model_and_evaluation_follow_the_same_rules():
    GlobalModel(ARCH, 0, _params())
    with pytest.raises(MessageError):
        GlobalModel(ARCH, 0, {"x": np.zeros((4, 4, 4), np.float32)})
    SiteEvaluation("a", 1, {name: 1.0 for name in METRIC_NAMES})
    with pytest.raises(MessageError):
        SiteEvaluation("a", 1, {"slice": np.zeros((24, 24))})


def test_a_calibration_carries_one_positive_range_per_hidden_synthesis_layer():
    from medcodec_fed.messages import SiteCalibration, calibration_layers

    n = calibration_layers(ARCH)
    assert n == len({k.split(".")[1] for k in parameter_spec(ARCH) if k.startswith("g_s.")}) - 1
    cal = SiteCalibration("a", ARCH, [1.0] * n)
    assert cal.activation_max == (1.0,) * n and {f.name for f in dataclasses.fields(cal)} == {
        "site",
        "arch",
        "activation_max",
    }
    for bad in ([1.0] * (n + 1), [0.0] * n, [float("nan")] * n, np.ones(n), "1,2,3", [np.ones(3)] * n, None):
        with pytest.raises(MessageError):
            SiteCalibration("a", ARCH, bad)  # type: ignore[arg-type]
