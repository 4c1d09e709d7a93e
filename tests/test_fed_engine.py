"""The in-process engine: dropout, sampling, rejection, resume, determinism, personalization."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from medcodec.files.images import write
from medcodec.volume import Volume
from medcodec_fed import engine, runfolder
from medcodec_fed.config import DRILL_KINDS, RunConfig
from medcodec_fed.messages import SiteUpdate
from medcodec_fed.sites import Site
from tests.conftest import drawn

# Tiny and fast: 2-3 sites of two 16x24x24 volumes, mc3d-xs, 1 local step of 2 patches of 16^3.
TINY = RunConfig(
    arch="mc3d-xs",
    rounds=3,
    local_steps=1,
    batch=2,
    patch=16,
    eval_crop=16,
    calib_patches=2,
    calib_size=16,
    seed=0,
    threads=1,
    plots=False,
)


def _make_sites(root, n=2) -> list[Site]:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:16, 0:24, 0:24]
    sites = []
    for s in range(n):
        folder = root / f"site{s}"
        folder.mkdir(parents=True)
        for k in range(2):
            v = 400 * np.sin(x / (3 + s + k)) * np.cos(y / 4) + 30 * z + rng.normal(0, 10, x.shape)
            write(Volume(v.astype(np.int16)), folder / f"v{k}.nii.gz")
        sites.append(Site.from_folder(f"site{s}", folder))
    return sites


def _quiet(_line: str) -> None:
    pass


def _checkpoint_params(out) -> dict[str, np.ndarray]:
    blob = torch.load(out / runfolder.CHECKPOINT, weights_only=True)
    return {k: v.numpy() for k, v in blob["parameters"].items()}


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return _make_sites(tmp_path_factory.mktemp("sites"))


@pytest.fixture(scope="module")
def reference(sites, tmp_path_factory):
    """An uninterrupted 3-round run with export."""
    out = tmp_path_factory.mktemp("ref")
    return engine.run(sites, TINY, out, say=_quiet)


def test_only_messages_reach_the_server(sites, tmp_path, monkeypatch):
    from medcodec_fed.messages import parameter_spec

    seen = []
    real = engine.aggregate

    def spy(reference, updates, **kwargs):
        for u in updates:
            assert type(u) is SiteUpdate
            assert all(parameter_spec(u.arch)[k][0] == v.shape for k, v in u.parameters.items())
            seen.append(u.site)
        return real(reference, updates, **kwargs)

    monkeypatch.setattr(engine, "aggregate", spy)
    engine.run(sites, replace(TINY, rounds=1, export=False), tmp_path / "spy", say=_quiet)
    assert sorted(seen) == ["site0", "site1"]


def test_a_run_writes_a_codec_model_and_per_round_per_site_metrics(reference, sites):
    import medcodec

    doc = json.loads((reference.out / runfolder.METRICS).read_text())
    assert doc["model"] == reference.model.name and reference.model.is_file()
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    for rec in doc["rounds"]:
        assert set(rec["eval"]) == {s.name for s in sites}
        assert {"bpv", "psnr", "ssim"} <= set(rec["eval"]["site0"])
        assert set(rec["train"]) == {s.name for s in sites}
    assert set(doc["final"]) == {s.name for s in sites} and doc["final"]["site0"]["ratio"] > 1
    vol = np.arange(16 * 24 * 24, dtype=np.int16).reshape(16, 24, 24) % 300
    data = medcodec.compress(vol, quality=50, model=str(reference.model))
    assert medcodec.decompress(data, model=str(reference.model)).array.shape == vol.shape


def test_the_export_reads_no_voxel_at_the_server_only_the_sites_ranges(sites, tmp_path, monkeypatch):
    import medcodec.training.export
    from medcodec_fed import model_files as fed_export
    from medcodec_fed.local import calibrate_site
    from medcodec_fed.messages import SiteCalibration

    sent, exported = [], []

    def at_site(*args, **kwargs):
        cal = calibrate_site(*args, **kwargs)
        sent.append(cal)
        return cal

    def export_spy(model, out, calibration=None, **kwargs):
        exported.append((calibration, kwargs["activation_max"]))
        return real_export(model, out, calibration, **kwargs)

    real_export = medcodec.training.export.export_model
    monkeypatch.setattr(fed_export, "calibrate_site", at_site)
    monkeypatch.setattr(medcodec.training.export, "export_model", export_spy)
    engine.run(sites, replace(TINY, rounds=1), tmp_path / "cal", say=_quiet)
    assert [type(c) for c in sent] == [SiteCalibration, SiteCalibration]
    assert [c.site for c in sent] == ["site0", "site1"]
    ((calibration, act_max),) = exported
    assert calibration is None  # no patches reach the export, only the ranges
    assert act_max == [max(a, b) for a, b in zip(sent[0].activation_max, sent[1].activation_max)]


def test_the_same_seed_gives_a_bit_identical_model_file(reference, sites, tmp_path):
    again = engine.run(sites, TINY, tmp_path / "again", say=_quiet)
    assert again.model.read_bytes() == reference.model.read_bytes()
    other = engine.run(sites, replace(TINY, seed=1, rounds=1), tmp_path / "other", say=_quiet)
    assert other.model.read_bytes() != reference.model.read_bytes()


def test_resume_after_an_interruption_equals_the_uninterrupted_run(reference, sites, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = engine.train_site

    def interrupted(current, *args, **kwargs):
        if current.round == 3:
            raise KeyboardInterrupt
        return real(current, *args, **kwargs)

    monkeypatch.setattr(engine, "train_site", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.run(sites, TINY, out, say=_quiet)
    assert json.loads((out / runfolder.METRICS).read_text())["rounds"][-1]["round"] == 2
    monkeypatch.setattr(engine, "train_site", real)
    with pytest.raises(FileExistsError):
        engine.run(sites, TINY, out, say=_quiet)
    resumed = engine.run(sites, TINY, out, resume=True, say=_quiet)
    assert resumed.model.read_bytes() == reference.model.read_bytes()
    got, want = _checkpoint_params(out), _checkpoint_params(reference.out)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert _untimed(resumed.metrics["rounds"]) == _untimed(reference.metrics["rounds"])


def _untimed(rounds: list[dict]) -> list[dict]:
    """Round records without what depends on the clock (durations, training timings)."""
    return [{k: v for k, v in r.items() if k != "seconds"} | {"train": {}} for r in rounds]


def test_a_finished_run_can_be_extended_by_resuming_with_more_rounds(reference, sites, tmp_path):
    out = tmp_path / "short"
    engine.run(sites, replace(TINY, rounds=2, export=False), out, say=_quiet)
    engine.run(sites, replace(TINY, export=False), out, resume=True, say=_quiet)
    got, want = _checkpoint_params(out), _checkpoint_params(reference.out)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_resume_refuses_changed_settings(sites, tmp_path):
    out = tmp_path / "r"
    engine.run(sites, replace(TINY, rounds=1, export=False), out, say=_quiet)
    with pytest.raises(ValueError, match="lr"):
        engine.run(sites, replace(TINY, rounds=2, lr=1e-2, export=False), out, resume=True, say=_quiet)
    with pytest.raises(ValueError, match="sites"):
        engine.run(sites[:1], replace(TINY, rounds=2, export=False), out, resume=True, say=_quiet)
    with pytest.raises(ValueError, match="drill_hostile"):
        engine.run(
            sites, replace(TINY, rounds=2, export=False, drill_hostile={"site0": "nan"}), out, resume=True, say=_quiet
        )


def test_a_checkpoint_older_than_a_setting_resumes_with_its_default(sites, tmp_path):
    out = tmp_path / "old"
    engine.run(sites, replace(TINY, rounds=1, export=False), out, say=_quiet)
    blob = torch.load(out / runfolder.CHECKPOINT, weights_only=True)
    del blob["config"]["drill_hostile"]  # as written before the setting existed
    torch.save(blob, out / runfolder.CHECKPOINT)
    result = engine.run(sites, replace(TINY, rounds=2, export=False), out, resume=True, say=_quiet)
    assert [r["round"] for r in result.metrics["rounds"]] == [1, 2]


def test_when_every_site_drops_out_the_global_model_is_kept_and_said(sites, tmp_path, caplog):
    lines = []
    cfg = replace(TINY, rounds=2, dropout=1.0, export=False)
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        result = engine.run(sites, cfg, tmp_path / "all-drop", say=lines.append)
    for rec in result.metrics["rounds"]:
        assert rec["kept_previous"] and rec["accepted"] == [] and rec["dropped"] == ["site0", "site1"]
    assert all("global model kept" in line for line in lines if line.startswith("round"))
    assert "global model is kept" in caplog.text
    init = engine.initial_parameters(cfg)
    got = _checkpoint_params(tmp_path / "all-drop")
    assert all(np.array_equal(got[k], init[k]) for k in init)


def test_a_site_with_dropout_one_never_trains_and_zero_always_does(sites, tmp_path):
    cfg = replace(TINY, rounds=2, dropout=0.0, site_dropout={"site0": 1.0}, export=False)
    result = engine.run(sites, cfg, tmp_path / "one-drop", say=_quiet)
    for rec in result.metrics["rounds"]:
        assert rec["dropped"] == ["site0"] and rec["accepted"] == ["site1"] and not rec["kept_previous"]


def test_dropout_draws_are_per_site_per_round_and_reproducible():
    cfg = replace(TINY, dropout=0.5)
    names = [f"s{i}" for i in range(10)]
    draws = [engine.dropped_sites(cfg, names, range(10), r) for r in range(1, 41)]
    assert draws == [engine.dropped_sites(cfg, names, range(10), r) for r in range(1, 41)]
    rate = sum(len(d) for d in draws) / 400
    assert 0.4 < rate < 0.6
    assert engine.dropped_sites(replace(cfg, dropout=0.0), names, range(10), 1) == []
    assert engine.dropped_sites(replace(cfg, dropout=1.0), names, range(10), 1) == list(range(10))


def test_client_sampling_takes_the_fraction_of_sites():
    cfg = replace(TINY, fraction=0.3)
    picks = [engine.sample_sites(cfg, 10, r) for r in range(1, 21)]
    assert all(len(p) == 3 and p == sorted(set(p)) for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert engine.sample_sites(replace(cfg, fraction=0.01), 10, 1) != []
    assert engine.sample_sites(replace(cfg, fraction=1.0), 4, 1) == [0, 1, 2, 3]


def test_a_broken_site_is_rejected_logged_and_left_out(sites, tmp_path, monkeypatch, caplog):
    real = engine.train_site

    def broken(current, site, *args, **kwargs):
        update, local = real(current, site, *args, **kwargs)
        if site == "site1":
            params = {k: np.full_like(v, np.nan) for k, v in update.parameters.items()}
            update = SiteUpdate(
                site=site,
                arch=update.arch,
                round=update.round,
                parameters=params,
                num_samples=update.num_samples,
                metrics=update.metrics,
            )
        return update, local

    monkeypatch.setattr(engine, "train_site", broken)
    cfg = replace(TINY, rounds=1, export=False)
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        result = engine.run(sites, cfg, tmp_path / "broken", say=_quiet)
    rec = result.metrics["rounds"][0]
    assert rec["accepted"] == ["site0"] and rec["rejected"][0]["site"] == "site1"
    assert "non-finite" in rec["rejected"][0]["reason"] and "site1" in caplog.text
    # The new global model is exactly site0's update: nothing of site1 was averaged in.
    current = engine.GlobalModel(cfg.arch, 1, engine.initial_parameters(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # the run's thread count: float sums depend on it
    try:
        good, _ = real(
            current, "site0", engine.load_site(sites[0], eval_crop=16), cfg.local_config(), seed=cfg.seed, site_index=0
        )
    finally:
        torch.set_num_threads(threads)
    got = _checkpoint_params(tmp_path / "broken")
    assert all(np.array_equal(got[k], good.parameters[k]) for k in good.parameters)


def test_a_site_that_cannot_build_a_valid_message_is_rejected(sites, tmp_path, monkeypatch, caplog):
    real = engine.train_site

    def wrong_shape(current, site, *args, **kwargs):
        update, local = real(current, site, *args, **kwargs)
        if site == "site0":
            params = dict(update.parameters, **{"g_a.0.bias": np.zeros(3, np.float32)})
            update = SiteUpdate(site=site, arch=update.arch, round=update.round, parameters=params, num_samples=1)
        return update, local

    monkeypatch.setattr(engine, "train_site", wrong_shape)
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        result = engine.run(sites, replace(TINY, rounds=1, export=False), tmp_path / "malformed", say=_quiet)
    rec = result.metrics["rounds"][0]
    assert rec["accepted"] == ["site1"]
    assert rec["rejected"][0]["site"] == "site0" and "malformed" in rec["rejected"][0]["reason"]
    assert "shape" in caplog.text


def test_personalized_groups_stay_local_and_each_site_gets_its_own_model(sites, tmp_path):
    from medcodec_fed.messages import parameter_spec

    last = max(int(k.split(".")[1]) for k in parameter_spec(TINY.arch) if k.startswith("g_s."))
    head = f"g_s.{last}."  # the last synthesis layer: a per-site decoder head
    cfg = replace(TINY, rounds=2, local_groups=("prior.*", head + "*"))
    result = engine.run(sites, cfg, tmp_path / "perso", say=_quiet)
    blob = torch.load(tmp_path / "perso" / runfolder.CHECKPOINT, weights_only=True)
    local = {s: {k: v.numpy() for k, v in p.items()} for s, p in blob["local"].items()}
    init = engine.initial_parameters(cfg)
    names = sorted(local["site0"])
    assert names and all(n.startswith(("prior.", head)) for n in names)
    assert any(not np.array_equal(local["site0"][n], local["site1"][n]) for n in names)
    # The server's copy of the personalized parameters never moved from the initial model.
    server_params = {k: v.numpy() for k, v in blob["parameters"].items()}
    assert all(np.array_equal(server_params[n], init[n]) for n in names)
    assert not np.array_equal(server_params["g_a.0.weight"], init["g_a.0.weight"])
    assert set(result.site_models) == {"site0", "site1"}
    files = [p.read_bytes() for p in result.site_models.values()]
    assert files[0] != files[1] and all(p.is_file() for p in result.site_models.values())


def test_baselines_and_plots(sites, tmp_path):
    cfg = replace(TINY, rounds=1, baselines=True, plots=True)
    result = engine.run(sites, cfg, tmp_path / "base", say=_quiet)
    base = result.metrics["baselines"]
    for kind in ("federated", "centralized", "local_only"):
        assert set(base[kind]) == {"site0", "site1"} and base[kind]["site0"]["psnr"] > 0
    assert base["steps"]["centralized"] == 2 * cfg.local_steps
    for name in ("local_loss", "global_rd", "ratio_per_site", "slices", "comparison"):
        assert drawn(tmp_path / "base" / f"{name}.png")


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory):
    """site0 and site1 as in ``sites``, plus site2, which the hostile-site tests corrupt."""
    return _make_sites(tmp_path_factory.mktemp("three"), n=3)


@pytest.fixture(scope="module")
def honest_only(three_sites, tmp_path_factory):
    """The parameters of a run of the two honest sites alone."""
    out = tmp_path_factory.mktemp("honest") / "run"
    engine.run(three_sites[:2], replace(TINY, export=False), out, say=_quiet)
    return _checkpoint_params(out)


@pytest.mark.parametrize("kind", DRILL_KINDS)
def test_a_hostile_site_cannot_move_the_global_model_and_the_run_goes_on(
    kind, three_sites, honest_only, tmp_path, caplog
):
    # The fault drill: site2 trains, then sends the hostile update of ``kind`` every round.
    config = replace(TINY, export=False, drill_hostile={"site2": kind})
    out, lines = tmp_path / "hostile", []
    with caplog.at_level(logging.WARNING, logger="medcodec_fed"):
        result = engine.run(three_sites, config, out, say=lines.append)
    assert result.metrics["drill"] == {"hostile": {"site2": kind}, "note": lines[0]} and "fault drill" in lines[0]
    honest_weight = TINY.local_steps * TINY.batch
    for rec in result.metrics["rounds"]:
        assert {"site0", "site1"} <= set(rec["accepted"])  # honest sites never diverge
        if kind == "samples":
            assert rec["train"]["site2"]["num_samples"] == 2**63 - 1
            assert rec["capped"] == ["site2"] and rec["num_samples"] == 3 * honest_weight
        else:
            assert rec["accepted"] == ["site0", "site1"] and rec["num_samples"] == 2 * honest_weight
            (rej,) = rec["rejected"]
            assert rej["site"] == "site2" and ("non-finite" if kind == "nan" else "distance") in rej["reason"]
            assert f"round {rec['round']}: rejected the update from site 'site2'" in caplog.text
    got = _checkpoint_params(out)
    if kind != "samples":  # rejected every round: exactly the run without site2
        assert all(np.array_equal(got[k], honest_only[k]) for k in honest_only)
    diff = np.sqrt(sum(np.square(got[k].astype(np.float64) - honest_only[k]).sum() for k in honest_only))
    norm = np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in honest_only.values()))
    assert diff / norm < 0.05


def test_a_drill_names_known_sites_and_marks_the_model_file(three_sites, tmp_path):
    from medcodec.model.files import load_model

    with pytest.raises(ValueError, match="drill_hostile names unknown sites"):
        engine.run(three_sites[:2], replace(TINY, drill_hostile={"site2": "huge"}), tmp_path / "x", say=_quiet)
    with pytest.raises(ValueError, match="drill_hostile must map"):
        replace(TINY, drill_hostile={"site2": "loud"})
    config = replace(TINY, rounds=1, drill_hostile={"site2": "nan"})
    result = engine.run(three_sites, config, tmp_path / "drill", say=_quiet)
    meta = load_model(str(result.model)).meta
    assert meta["federated"]["drill"] == config.drill() and meta["trained_on"].startswith("fault drill")
    assert engine.run(three_sites, replace(TINY, rounds=1), tmp_path / "real", say=_quiet).metrics["drill"] is None
