"""Local training at a site: what it returns, determinism, FedProx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcodec_fed.config import LocalConfig, RunConfig
from medcodec_fed.engine import initial_parameters
from medcodec_fed.local import build_model, evaluate_site, proximal_term, train_site
from medcodec_fed.messages import GlobalModel
from medcodec_fed.sites import SiteData

ARCH = "mc3d-xs"
CFG = LocalConfig(steps=2, batch=2, patch=16)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as runs default to: quicker on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> SiteData:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:16, 0:24, 0:24]
    vol = (np.sin(x / 3.0) * np.cos(y / 5.0) + 0.05 * rng.normal(size=x.shape)).astype(np.float32)
    return SiteData("a", [vol], [vol[:, :16, :16].copy()])


def _init() -> dict[str, np.ndarray]:
    return initial_parameters(RunConfig(arch=ARCH, seed=3))


def test_train_site_returns_shared_parameters_counts_and_metrics():
    init = _init()
    local_names = [k for k in init if k.startswith("prior.")]
    shared = GlobalModel(ARCH, 1, {k: v for k, v in init.items() if k not in local_names})
    local = {k: init[k] for k in local_names}
    update, new_local = train_site(shared, "a", _data(), CFG, seed=0, site_index=0, local_state=local)
    assert set(update.parameters) == set(shared.parameters)
    assert set(new_local) == set(local_names)
    assert update.num_samples == CFG.steps * CFG.batch
    assert update.round == 1 and update.site == "a"
    assert {"loss", "mse", "bpv", "steps"} <= set(update.metrics)
    assert any(not np.array_equal(update.parameters[k], shared.parameters[k]) for k in shared.parameters)
    assert any(not np.array_equal(new_local[k], local[k]) for k in local)


def test_same_coordinates_give_the_same_bits_and_others_differ():
    g = GlobalModel(ARCH, 2, _init())
    a, _ = train_site(g, "a", _data(), CFG, seed=0, site_index=1)
    b, _ = train_site(g, "a", _data(), CFG, seed=0, site_index=1)
    c, _ = train_site(g, "a", _data(), CFG, seed=0, site_index=2)
    assert all(np.array_equal(a.parameters[k], b.parameters[k]) for k in a.parameters)
    assert any(not np.array_equal(a.parameters[k], c.parameters[k]) for k in a.parameters)


def test_proximal_term_matches_a_hand_computation():
    init = _init()
    model = build_model(ARCH, init)
    anchor = {k: torch.from_numpy(v - 0.5) for k, v in init.items() if k.startswith("g_a.0.")}
    n = sum(v.size for k, v in init.items() if k.startswith("g_a.0."))
    assert abs(float(proximal_term(model, anchor, 0.1).detach()) - 0.1 / 2 * 0.25 * n) < 1e-3


def test_fedprox_reports_a_positive_proximal_term():
    g = GlobalModel(ARCH, 1, _init())
    update, _ = train_site(g, "a", _data(), LocalConfig(steps=3, batch=2, patch=16, mu=0.5), seed=0, site_index=0)
    assert update.metrics["prox"] > 0


def test_epochs_set_the_steps_by_data_size():
    data = _data()  # 16*24*24 = 9216 voxels; one batch of 2 patches of 16^3 = 8192 voxels
    assert LocalConfig(epochs=1.0, batch=2, patch=16).steps_for(data) == 2
    assert LocalConfig(epochs=0.01, batch=2, patch=16).steps_for(data) == 1
    assert LocalConfig(steps=7).steps_for(data) == 7


def test_evaluate_site_reports_rate_and_distortion():
    g = GlobalModel(ARCH, 1, _init())
    ev = evaluate_site(g, "a", _data(), 1.0)
    assert ev.metrics["bpv"] > 0 and np.isfinite(ev.metrics["psnr"]) and -1 <= ev.metrics["ssim"] <= 1
    assert ev.metrics["voxels"] == 16 * 16 * 16


def test_init_from_a_training_checkpoint(tmp_path):
    params = _init()
    model = build_model(ARCH, {k: v + 1.0 for k, v in params.items()})
    torch.save({"model": model.state_dict(), "step": 10}, tmp_path / "checkpoint.pt")
    got = initial_parameters(RunConfig(arch=ARCH, init=str(tmp_path / "checkpoint.pt")))
    assert all(np.array_equal(got[k], params[k] + 1.0) for k in params)
