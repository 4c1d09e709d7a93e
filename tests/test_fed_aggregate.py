"""Aggregation arithmetic and the rejection of bad updates."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medcodec_fed.aggregate import (
    MAX_SAMPLES,
    aggregate,
    check_update,
    distance_bound,
    fedavg,
    median,
    trimmed_mean,
    update_distance,
)
from medcodec_fed.messages import GlobalModel, SiteUpdate, parameter_spec

ARCH = "mc3d-xs"
SPEC = parameter_spec(ARCH)


def _params(fill) -> dict[str, np.ndarray]:
    """Parameters whose every value is ``fill`` (a number) or drawn by ``fill(shape)``."""
    return {
        k: (fill(shape) if callable(fill) else np.full(shape, fill)).astype(dtype) for k, (shape, dtype) in SPEC.items()
    }


def _update(site: str, params, n: int, round_: int = 1, arch: str = ARCH) -> SiteUpdate:
    return SiteUpdate(site=site, arch=arch, round=round_, parameters=params, num_samples=n, metrics={"loss": 1.0})


# Updates are screened by their distance to the global model, relative to its norm when
# there are too few to compare: a reference of 2.0 keeps updates of 1.0 to 4.0 plausible.
REFERENCE = GlobalModel(ARCH, 1, _params(2.0))


def test_fedavg_is_the_sample_weighted_mean():
    rng = np.random.default_rng(0)
    p = [_params(lambda s: rng.normal(size=s)) for _ in range(3)]
    counts = [10, 30, 60]
    got = fedavg([_update(s, q, n) for s, q, n in zip("abc", p, counts)])
    for name in SPEC:
        hand = (10 * p[0][name].astype(np.float64) + 30 * p[1][name] + 60 * p[2][name]) / 100
        np.testing.assert_allclose(got[name], hand.astype(np.float32), rtol=1e-6, atol=1e-7)
        assert got[name].dtype == np.float32


def test_fedavg_by_hand_on_constants():
    got = aggregate(REFERENCE, [_update("a", _params(1.0), 1), _update("b", _params(4.0), 3)])
    assert got.accepted == ("a", "b") and got.num_samples == 4
    for v in got.parameters.values():
        assert np.all(v == np.float32(3.25))  # (1*1 + 3*4) / 4


def test_median_and_trimmed_mean_ignore_one_outlier():
    ups = [_update(s, _params(v), n) for s, v, n in zip("abcde", [1.0, 2.0, 3.0, 4.0, 1e6], [1, 1, 1, 1, 1000])]
    med = median(ups)
    tm = trimmed_mean(ups, 0.2)  # drops one value at each end of every coordinate
    for name in SPEC:
        assert np.all(med[name] == 3.0)
        assert np.all(tm[name] == 3.0)  # mean of 2, 3, 4
    assert np.all(fedavg(ups)["g_a.0.bias"] > 1e5)  # while FedAvg is dragged away


def test_trimmed_mean_with_few_updates_keeps_one_value():
    ups = [_update("a", _params(1.0), 1), _update("b", _params(5.0), 1)]
    assert np.all(trimmed_mean(ups, 0.49)["g_a.0.bias"] == 3.0)
    assert np.all(trimmed_mean(ups[:1], 0.4)["g_a.0.bias"] == 1.0)


@pytest.mark.parametrize("method", ["fedavg", "median", "trimmed-mean"])
def test_non_finite_updates_are_rejected_logged_and_never_averaged(method, caplog):
    bad = _params(2.0)
    bad["g_s.1.conv.weight"][0, 0, 0, 0, 0] = np.nan
    inf = _params(2.0)
    inf["prior.biases.0"][0] = np.inf
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        got = aggregate(
            REFERENCE, [_update("a", _params(1.0), 5), _update("b", bad, 5), _update("c", inf, 5)], method=method
        )
    assert got.accepted == ("a",)
    assert [r.site for r in got.rejected] == ["b", "c"]
    assert "non-finite" in got.rejected[0].reason
    assert all(np.all(v == 1.0) for v in got.parameters.values())
    assert "'b'" in caplog.text and "'c'" in caplog.text and "non-finite" in caplog.text


def test_wrong_shape_wrong_round_and_missing_parameters_are_rejected(caplog):
    other_arch = {k: np.zeros(s, d) for k, (s, d) in parameter_spec("mc3d-s").items()}
    partial = _params(1.0)
    del partial["g_a.0.bias"]
    ups = [
        _update("good", _params(1.0), 2),
        _update("shape", other_arch, 2, arch="mc3d-s"),  # every tensor has another shape
        _update("stale", _params(1.0), 2, round_=0),
        _update("partial", partial, 2),
        _update("empty", _params(1.0), 0),
        _update("good", _params(9.0), 2),  # a second update from one site
    ]
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        got = aggregate(REFERENCE, ups)
    assert got.accepted == ("good",)
    reasons = {r.site: r.reason for r in got.rejected}
    assert "architecture" in reasons["shape"]
    assert "round" in reasons["stale"]
    assert "missing" in reasons["partial"]
    assert "no training samples" in reasons["empty"]
    assert "duplicate" in reasons["good"]
    assert caplog.text.count("rejected the update") == 5
    assert all(np.all(v == 1.0) for v in got.parameters.values())


def test_an_extra_parameter_the_reference_does_not_share_is_rejected():
    shared = {k: v for k, v in _params(0.0).items() if not k.startswith("prior.")}
    ref = GlobalModel(ARCH, 1, shared)
    assert "must stay local" in check_update(_update("a", _params(1.0), 1), ref)


def test_a_shape_mismatch_is_caught_even_under_the_same_architecture_name():
    # A message cannot hold one (it checks shapes on construction); check_update does not rely on that.
    update = _update("a", _params(1.0), 1)
    object.__setattr__(update, "parameters", dict(update.parameters, **{"g_a.0.bias": np.zeros(3, np.float32)}))
    assert "shape" in check_update(update, REFERENCE)


def test_nothing_accepted_gives_no_parameters():
    bad = _params(np.nan)
    got = aggregate(REFERENCE, [_update("a", bad, 1)])
    assert got.parameters is None and got.accepted == () and got.num_samples == 0
    assert aggregate(REFERENCE, []).parameters is None


# --- finite but huge updates, and sample counts --------------------------------------------


def _honest(rng, k: int) -> list[dict[str, np.ndarray]]:
    """``k`` plausible updates: the reference plus a small, site-specific change."""
    return [
        {n: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for n, v in REFERENCE.parameters.items()}
        for _ in range(k)
    ]


@pytest.mark.parametrize("attack", ["1e30", "scaled"])
@pytest.mark.parametrize("method", ["fedavg", "median", "trimmed-mean"])
def test_a_huge_finite_update_is_rejected_with_its_distance_and_the_rest_averaged(attack, method, caplog):
    rng = np.random.default_rng(2)
    honest = _honest(rng, 3)
    hostile = _params(1e30) if attack == "1e30" else {n: v * np.float32(1e4) for n, v in honest[0].items()}
    ups = [_update(s, p, 4) for s, p in zip("abc", honest)] + [_update("evil", hostile, 4)]
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        got = aggregate(REFERENCE, ups, method=method)
    assert got.accepted == ("a", "b", "c") and got.num_samples == 12
    (rej,) = got.rejected
    assert rej.site == "evil" and "distance" in rej.reason and "median" in rej.reason
    assert "'evil'" in caplog.text and "distance" in caplog.text
    want = aggregate(REFERENCE, ups[:3], method=method)
    assert all(np.array_equal(got.parameters[k], want.parameters[k]) for k in SPEC)


def test_with_one_or_two_updates_the_bound_is_relative_to_the_global_models_norm():
    rng = np.random.default_rng(3)
    (honest,) = _honest(rng, 1)
    got = aggregate(REFERENCE, [_update("a", honest, 2), _update("evil", _params(1e30), 2)])
    assert got.accepted == ("a",) and "norm" in got.rejected[0].reason
    assert aggregate(REFERENCE, [_update("a", honest, 2)]).accepted == ("a",)
    # An update as far away as the model is large is accepted, three times that is not.
    assert aggregate(REFERENCE, [_update("a", _params(4.0), 2)]).accepted == ("a",)
    assert aggregate(REFERENCE, [_update("a", _params(8.0), 2)]).accepted == ()
    # An all-zero global model still has a scale (that of a model of RMS 0.01).
    zero = GlobalModel(ARCH, 1, _params(0.0))
    assert aggregate(zero, [_update("a", _params(0.01), 2)]).accepted == ("a",)
    assert aggregate(zero, [_update("a", _params(1.0), 2)]).accepted == ()


def test_a_round_of_tiny_updates_is_not_decided_by_noise():
    rng = np.random.default_rng(4)
    ups = []
    for site, sd in zip("abcd", [1e-7, 1e-7, 1e-7, 1e-5]):  # d is 100x the others, yet far below the floor
        ups.append(
            _update(
                site, {n: v + rng.normal(0, sd, v.shape).astype(np.float32) for n, v in REFERENCE.parameters.items()}, 2
            )
        )
    assert aggregate(REFERENCE, ups).accepted == ("a", "b", "c", "d")


def test_the_distance_bound_scales_with_the_median_above_the_floor():
    norm = float(np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in REFERENCE.parameters.values())))
    assert distance_bound(REFERENCE, [1.0, 2.0, 3.0])[0] == max(10 * 2.0, 0.01 * norm)
    assert distance_bound(REFERENCE, [1e-9, 1e-9, 1e-9])[0] == pytest.approx(0.01 * norm)
    assert distance_bound(REFERENCE, [1.0, 2.0])[0] == pytest.approx(2 * norm)
    (honest,) = _honest(np.random.default_rng(5), 1)
    hand = np.sqrt(sum(np.square(honest[k].astype(np.float64) - REFERENCE.parameters[k]).sum() for k in SPEC))
    assert update_distance(_update("a", honest, 1), REFERENCE) == pytest.approx(hand, rel=1e-12)


def test_a_huge_sample_count_is_capped_so_one_site_cannot_dominate(caplog):
    ups = [_update("a", _params(1.0), 2), _update("b", _params(3.0), 2), _update("c", _params(2.0), 2**63 - 1)]
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        got = aggregate(REFERENCE, ups, max_samples=2)
    assert got.accepted == ("a", "b", "c") and got.capped == ("c",) and got.num_samples == 6
    assert all(np.allclose(v, 2.0) for v in got.parameters.values())  # equal weights
    assert "'c' reports 9223372036854775807 samples" in caplog.text
    # The default cap, too, keeps such a count from taking all the weight.
    default = aggregate(REFERENCE, ups)
    assert default.capped == ("c",) and default.num_samples == 4 + MAX_SAMPLES
    assert aggregate(REFERENCE, ups, max_samples=None).capped == ()


def test_a_sample_count_must_be_a_positive_integer():
    update = _update("a", _params(1.0), 1)
    object.__setattr__(update, "num_samples", 1.5)  # a message cannot hold one; check_update does not rely on it
    assert "integer" in check_update(update, REFERENCE)
    object.__setattr__(update, "num_samples", True)
    assert "integer" in check_update(update, REFERENCE)
    object.__setattr__(update, "num_samples", -3)
    assert "no training samples" in check_update(update, REFERENCE)


def test_the_run_config_caps_at_every_honest_sites_count_by_default():
    from medcodec_fed.config import RunConfig

    assert RunConfig(local_steps=50, batch=4).sample_cap() == 200
    assert RunConfig(local_epochs=1.0).sample_cap() == MAX_SAMPLES
    assert RunConfig(local_epochs=1.0, max_samples=5000).sample_cap() == 5000
    with pytest.raises(ValueError, match="max_samples"):
        RunConfig(max_samples=0)
