"""The Flower engine (medcodec_fed.flower): settings, the app folder, the client and server logic, simulation.

The unmarked tests call the ClientApp's and the strategy's methods directly (no Flower
runtime, a few seconds). The tests marked ``flower`` run Flower's simulation engine (Ray)
and compare with the in-process engine; the deployment engine is in
``test_flower_deployment.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402

from medcodec.files.images import write  # noqa: E402
from medcodec.volume import Volume  # noqa: E402
from medcodec_fed import engine, flower, runfolder  # noqa: E402
from medcodec_fed.aggregate import aggregate  # noqa: E402
from medcodec_fed.config import DRILL_KINDS, RunConfig  # noqa: E402
from medcodec_fed.flower import apps  # noqa: E402
from medcodec_fed.messages import METRIC_NAMES, GlobalModel, SiteCalibration, parameter_spec  # noqa: E402
from medcodec_fed.sites import Site  # noqa: E402

TINY = RunConfig(
    arch="mc3d-xs",
    rounds=2,
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
NAMES = sorted(parameter_spec(TINY.arch))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Site]:
    root = tmp_path_factory.mktemp("sites")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:16, 0:24, 0:24]
    out = []
    for s in range(3):
        folder = root / f"site{s}"
        folder.mkdir()
        for k in range(2):
            v = 400 * np.sin(x / (3 + s + k)) * np.cos(y / 4) + 30 * z + rng.normal(0, 10, x.shape)
            write(Volume(v.astype(np.int16)), folder / f"v{k}.nii.gz")
        out.append(Site.from_folder(f"site{s}", folder))
    return out


def _params(out) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(out / runfolder.CHECKPOINT, weights_only=True)["parameters"].items()}


# --- settings and the app folder -------------------------------------------------------------


def test_settings_round_trip_through_the_flower_run_config():
    config = replace(
        TINY,
        site_dropout={"b": 0.25, "a": 1.0},
        local_epochs=0.5,
        init="/x/ckpt.pt",
        drill_hostile={"c": "huge", "a": "samples"},
    )
    options = flower.FlowerOptions(out="/runs/a", secagg=False, dp="server", dp_clipping_norm=0.5)
    table = flower.app_run_config(config, options)
    assert all(isinstance(v, (bool, int, float, str)) for v in table.values())  # Flower's run-config types
    assert table["site-dropout"] == "a=1.0,b=0.25" and table["local-steps"] == 1
    assert table["drill-hostile"] == "a=samples,c=huge"
    assert flower.settings_from_run_config(table) == (config, options)
    # run_simulation passes an empty run config: every key has a default
    assert flower.settings_from_run_config({}) == (RunConfig(), flower.FlowerOptions())
    with pytest.raises(ValueError, match="unknown run-config key"):
        flower.settings_from_run_config({"round": 3})


def test_settings_the_flower_engine_refuses():
    with pytest.raises(ValueError, match="FedAvg"):
        flower.app_run_config(replace(TINY, aggregation="median"), flower.FlowerOptions())
    with pytest.raises(ValueError, match="in-process"):
        flower.check_flower_config(replace(TINY, local_groups=("prior.*",)))
    with pytest.raises(ValueError, match="SecAgg"):  # server-side clipping needs every single update
        flower.FlowerOptions(dp="server", dp_clipping_norm=1.0)
    with pytest.raises(ValueError, match="min-fit-clients"):
        flower.FlowerOptions(min_fit_clients=1)
    with pytest.raises(ValueError, match="clipping-norm"):
        flower.FlowerOptions(dp="client")
    # a hostile-update drill rehearses the screening of each update, which SecAgg+ hides
    drill = replace(TINY, drill_hostile={"site2": "huge"})
    with pytest.raises(ValueError, match="drill-hostile.*SecAgg"):
        flower.app_run_config(drill, flower.FlowerOptions())
    with pytest.raises(ValueError, match="drill-hostile.*SecAgg"):
        flower.settings_from_run_config({"drill-hostile": "site2=huge"})
    config, _ = flower.settings_from_run_config({"drill-hostile": "site2=huge", "secagg": False})
    assert config.drill_hostile == drill.drill_hostile
    dp = flower.FlowerOptions(dp="client", dp_noise_multiplier=0.5, dp_clipping_norm=0.2, min_fit_clients=2)
    assert dp.dp_record() == {
        "mode": "client",
        "wrapper": "flwr.server.strategy.DifferentialPrivacyClientSideFixedClipping",
        "noise_multiplier": 0.5,
        "clipping_norm": 0.2,
        "num_sampled_clients": 2,
        "noise_stdev": 0.05,
    }


def test_the_app_folder_is_a_valid_flower_app(tmp_path):
    from flwr.common.config import validate_config

    path = flower.write_app(tmp_path / "app", TINY, flower.FlowerOptions(out="/srv/run"))
    doc = tomllib.loads(path.read_text())
    ok, errors, warnings = validate_config(doc, check_module=True, project_dir=path.parent)
    assert ok and not warnings, (errors, warnings)
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "medcodec_fed.flower.apps:server_app",
        "clientapp": "medcodec_fed.flower.apps:client_app",
    }
    assert flower.FLWR_REQUIREMENT in doc["project"]["dependencies"]
    assert flower.settings_from_run_config(doc["tool"]["flwr"]["app"]["config"]) == (
        TINY,
        flower.FlowerOptions(out="/srv/run"),
    )


def test_a_supernode_finds_its_site_in_its_node_config(sites):
    folder = sites[1].train[0].parent
    site, index = flower.site_from_node_config({"data-dir": str(folder), "site-name": "north", "partition-id": 4})
    assert (site.name, index, site.train) == ("north", 4, sites[1].train)
    site, index = flower.site_from_node_config({"data-dir": str(folder)})
    assert site.name == "site1" and index == flower.site_from_node_config({"data-dir": str(folder)})[1]
    with pytest.raises(ValueError, match="data-dir"):
        flower.site_from_node_config({"partition-id": 0})


# --- the ClientApp's logic ---------------------------------------------------------------------


def _fit_config(config: RunConfig, round_: int = 1, **extra) -> dict:
    return {"medcodec-settings": json.dumps(config.to_dict()), "medcodec-round": round_, **extra}


def test_a_site_sends_only_parameters_a_count_and_named_scalars(sites):
    init = engine.initial_parameters(TINY)
    client = apps._SiteClient(sites[0], 0)
    arrays, num, metrics = client.fit([init[n] for n in NAMES], _fit_config(TINY))
    assert len(arrays) == len(NAMES) and all(a.dtype == np.float32 for a in arrays)
    assert [a.shape for a in arrays] == [parameter_spec(TINY.arch)[n][0] for n in NAMES]
    assert num == TINY.local_steps * TINY.batch
    assert metrics["site"] == "site0" and set(metrics) - {"site"} <= METRIC_NAMES
    # the same update as the in-process engine's local step
    from medcodec_fed.local import train_site
    from medcodec_fed.sites import load_site

    want, _ = train_site(
        GlobalModel(TINY.arch, 1, init),
        "site0",
        load_site(sites[0], eval_crop=16),
        TINY.local_config(),
        seed=TINY.seed,
        site_index=0,
    )
    assert all(np.array_equal(a, want.parameters[n]) for a, n in zip(arrays, NAMES))


def test_a_site_drops_out_or_refuses_an_update_instead_of_sending_it(sites):
    init = [engine.initial_parameters(TINY)[n] for n in NAMES]
    client = apps._SiteClient(sites[2], 2)
    with pytest.raises(flower.SiteDropout):
        client.fit(init, _fit_config(replace(TINY, site_dropout={"site2": 1.0})))
    # an update SecAgg+ would have to clip is refused at the site (it would silently corrupt the sum)
    with pytest.raises(flower.UpdateRefused, match="clipping range"):
        client.fit(init, _fit_config(TINY, **{apps._SECAGG_CLIP: 0.01, apps._SECAGG_WEIGHT: 2.0}))
    with pytest.raises(flower.UpdateRefused, match="max weight"):
        client.fit(init, _fit_config(TINY, **{apps._SECAGG_CLIP: 8.0, apps._SECAGG_WEIGHT: 1.0}))


@pytest.mark.parametrize("kind", DRILL_KINDS)
def test_a_drill_site_sends_its_hostile_update_unscreened(kind, sites):
    from medcodec_fed.local import drill_update, train_site
    from medcodec_fed.sites import load_site

    init = engine.initial_parameters(TINY)
    config = replace(TINY, drill_hostile={"site2": kind})
    arrays, num, _ = apps._SiteClient(sites[2], 2).fit([init[n] for n in NAMES], _fit_config(config))
    current = GlobalModel(TINY.arch, 1, init)
    honest, _ = train_site(
        current, "site2", load_site(sites[2], eval_crop=16), TINY.local_config(), seed=TINY.seed, site_index=2
    )
    want = drill_update(honest, kind, current)  # what the in-process engine's site2 sends
    assert num == want.num_samples and (num == 2**63 - 1) == (kind == "samples")
    assert all(np.array_equal(a, want.parameters[n], equal_nan=True) for a, n in zip(arrays, NAMES))
    assert kind == "samples" or not all(np.array_equal(a, honest.parameters[n]) for a, n in zip(arrays, NAMES))
    # the other sites are honest
    arrays, num, _ = apps._SiteClient(sites[0], 0).fit([init[n] for n in NAMES], _fit_config(config))
    assert num == TINY.local_steps * TINY.batch and all(np.isfinite(a).all() for a in arrays)


def test_in_the_last_round_a_site_sends_its_activation_ranges(sites):
    init = [engine.initial_parameters(TINY)[n] for n in NAMES]
    client = apps._SiteClient(sites[1], 1)
    loss, voxels, metrics = client.evaluate(init, _fit_config(TINY, calibrate=False))
    assert not any(k.startswith("activation-max") for k in metrics) and voxels > 0 and loss > 0
    _, _, metrics = client.evaluate(init, _fit_config(TINY, calibrate=True))
    site, scalars, ranges = apps._split_metrics(TINY.arch, metrics)
    assert site == "site1" and set(scalars) <= METRIC_NAMES
    assert SiteCalibration(site, TINY.arch, ranges).activation_max == ranges


# --- the ServerApp's logic ---------------------------------------------------------------------


def _strategy(tmp_path, options: flower.FlowerOptions):
    run = apps._Run(TINY, replace(options, out=str(tmp_path)), tmp_path, say=lambda _: None)
    strategy = apps._FedAvg(run, engine.initial_parameters(TINY))
    return run, strategy


def _fit_res(update_params: dict, site: str, num: int = 2, **metrics) -> tuple[None, FitRes]:
    params = ndarrays_to_parameters([update_params[n] for n in NAMES])
    return None, FitRes(Status(Code.OK, ""), params, num, {"site": site, "loss": 1.0, **metrics})


def test_without_secagg_the_server_screens_and_averages_like_the_in_process_engine(tmp_path):
    run, strategy = _strategy(tmp_path, flower.FlowerOptions(secagg=False))
    init = engine.initial_parameters(TINY)
    rng = np.random.default_rng(1)
    ups = {s: {n: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32) for n, v in init.items()} for s in "abc"}
    ups["c"]["g_a.0.bias"][0] = np.nan  # a broken site
    results = [
        _fit_res(ups["b"], "b", 6),
        _fit_res(ups["a"], "a", 2),
        _fit_res(ups["c"], "c"),
        _fit_res(ups["a"], "x", 2, voxels_of_slice_3=1.0),
    ]
    params, _ = strategy.aggregate_fit(1, results, [RuntimeError("site d is offline")])
    rec = run.history[-1]
    assert rec["accepted"] == ["a", "b"] and rec["failures"] == ["site d is offline"]
    assert {r["site"] for r in rec["rejected"]} == {"c", "x"}
    from medcodec_fed.messages import SiteUpdate

    updates = [SiteUpdate("a", TINY.arch, 1, ups["a"], 2), SiteUpdate("b", TINY.arch, 1, ups["b"], 6)]
    # b reports more patches than local_steps x batch: both engines weigh it at that cap.
    assert rec["capped"] == ["b"] and rec["num_samples"] == 4
    want = aggregate(GlobalModel(TINY.arch, 1, init), updates, max_samples=TINY.sample_cap())
    got = parameters_to_ndarrays(params)
    assert all(np.array_equal(g, want.parameters[n]) for g, n in zip(got, NAMES))


def test_without_secagg_a_huge_finite_update_and_a_huge_count_are_screened_as_in_process(tmp_path):
    run, strategy = _strategy(tmp_path, flower.FlowerOptions(secagg=False))
    init = engine.initial_parameters(TINY)
    rng = np.random.default_rng(2)
    ups = {s: {n: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32) for n, v in init.items()} for s in "abc"}
    hostile = {n: np.full_like(v, 1e30) for n, v in init.items()}
    results = [
        _fit_res(ups["a"], "a"),
        _fit_res(ups["b"], "b"),
        _fit_res(ups["c"], "c", 2**63 - 1),
        _fit_res(hostile, "evil"),
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    rec = run.history[-1]
    assert rec["accepted"] == ["a", "b", "c"] and rec["capped"] == ["c"] and rec["num_samples"] == 6
    assert [r["site"] for r in rec["rejected"]] == ["evil"] and "distance" in rec["rejected"][0]["reason"]
    from medcodec_fed.messages import SiteUpdate

    updates = [SiteUpdate(s, TINY.arch, 1, ups[s], 2) for s in "abc"]  # equal weights
    want = aggregate(GlobalModel(TINY.arch, 1, init), updates)
    assert all(np.array_equal(g, want.parameters[n]) for g, n in zip(parameters_to_ndarrays(params), NAMES))


def test_with_secagg_the_server_checks_the_sum_and_keeps_the_model_when_it_is_broken(tmp_path):
    run, strategy = _strategy(tmp_path, flower.FlowerOptions(secagg=True))
    init = engine.initial_parameters(TINY)
    mean = {n: v.astype(np.float64) + 0.5 for n, v in init.items()}  # SecAgg+ hands back float64
    params, _ = strategy.aggregate_fit(1, [_fit_res(mean, "a"), _fit_res(mean, "b")], [])
    assert all(g.dtype == np.float32 for g in parameters_to_ndarrays(params))
    assert run.history[-1]["accepted"] == ["a", "b"] and not run.history[-1]["kept_previous"]
    mean["g_a.0.weight"][0] = np.inf
    params, _ = strategy.aggregate_fit(2, [_fit_res(mean, "a"), _fit_res(mean, "b")], [])
    assert params is None and run.history[-1]["kept_previous"]


def test_secagg_forgets_a_site_that_left_before_sharing_its_keys(monkeypatch):
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    def share_keys(self, grid, context, state):  # site 3 answered the setup, then vanished
        state.active_node_ids = {1, 2}
        return True

    monkeypatch.setattr(SecAggPlusWorkflow, "share_keys_stage", share_keys)
    state = WorkflowState(sampled_node_ids={1, 2, 3}, active_node_ids={1, 2, 3})
    assert apps._SecAggPlus(1.0, 0.5).share_keys_stage(None, None, state)
    assert state.sampled_node_ids == {1, 2}  # so "unmask" asks nobody for shares site 3 never sent


# --- Flower's simulation engine ----------------------------------------------------------------


def secagg_tolerance(config: RunConfig, options: flower.FlowerOptions, num_sites: int) -> float:
    """Largest difference SecAgg+'s quantization can make to a FedAvg round's result.

    Every site's weighted parameter w * n / max_weight is stochastically rounded to a step of
    2 * clipping_range / quantization_range (error < 1 step each); the sum of the sites'
    errors is divided by the sum of the weights n / max_weight.
    """
    step = 2 * options.secagg_clipping_range / options.secagg_quantization_range
    n = config.local_steps * config.batch
    return num_sites * step / (num_sites * n / options.max_weight(config))


def assert_matches_in_process(got: dict, want: dict, config: RunConfig, per_round: float) -> None:
    """Equal within the rounds' accumulated quantization error.

    Training carries a round's error into the next round and Adam's first step
    (lr * g / |g|) passes it on unchanged, except at the rare coordinates whose gradient
    is so close to 0 that the perturbation flips its sign: those may move by up to
    2 * lr per step. Allow at most 0.1 % of them.
    """
    diffs = np.concatenate([np.abs(got[k].astype(np.float64) - want[k]).ravel() for k in want])
    bound = config.rounds * per_round + 1e-6
    flips = 2 * config.lr * config.local_steps * (config.rounds - 1)
    assert diffs.max() <= bound + flips, f"max difference {diffs.max():.3g} > {bound + flips:.3g}"
    outside = float(np.mean(diffs > bound))
    assert outside <= 1e-3, f"{outside:.2%} of the weights differ by more than {bound:.3g}"


def _cli_argv(sites, out) -> list[str]:
    return [
        "run",
        *(f"--site={s.name}={s.train[0].parent}" for s in sites),
        "--arch",
        TINY.arch,
        "--rounds",
        str(TINY.rounds),
        "--local-steps",
        "1",
        "--batch",
        "2",
        "--patch",
        "16",
        "--eval-crop",
        "16",
        "--calib-patches",
        "2",
        "--calib-size",
        "16",
        "--threads",
        "1",
        "--seed",
        "0",
        "--no-plots",
        "--out",
        str(out),
    ]


def test_the_cli_refuses_what_an_engine_cannot_do(sites, tmp_path, capsys):
    from medcodec_fed.cli import main

    argv = _cli_argv(sites, tmp_path / "x")
    assert main([*argv, "--dp", "client"]) == 2  # a Flower option without --engine flower
    assert main([*argv, "--engine", "flower", "--resume"]) == 2
    assert main([*argv, "--engine", "flower", "--aggregation", "median"]) == 2
    assert main([*argv, "--engine", "flower", "--dp", "server", "--dp-clipping-norm", "1"]) == 2  # with SecAgg+
    err = capsys.readouterr().err
    assert "--engine flower" in err and "resume" in err and "FedAvg" in err and "SecAgg" in err
    assert not (tmp_path / "x").exists()


def test_the_cli_writes_the_flower_app(tmp_path):
    from medcodec_fed.cli import main

    assert (
        main(
            [
                "flower-app",
                str(tmp_path / "app"),
                "--arch",
                "mc3d-xs",
                "--rounds",
                "7",
                "--out",
                "/srv/run",
                "--dp",
                "client",
                "--dp-clipping-norm",
                "0.5",
                "--min-available-clients",
                "3",
            ]
        )
        == 0
    )
    table = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config, options = flower.settings_from_run_config(table)
    assert (config.arch, config.rounds, options.out, options.dp, options.min_available_clients) == (
        "mc3d-xs",
        7,
        "/srv/run",
        "client",
        3,
    )
    # the same settings from a TOML file, Flower options in a [flower] table
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(
        'arch = "mc3d-xs"\nrounds = 7\nout = "/srv/run"\n[flower]\nsecagg = false\n'
        'min-available-clients = 3\n[sites]\na = "ignored"\n'
    )
    assert main(["flower-app", str(tmp_path / "app2"), "--config", str(run_toml)]) == 0
    table = tomllib.loads((tmp_path / "app2" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config, options = flower.settings_from_run_config(table)
    assert (config.rounds, options.out, options.secagg, options.min_available_clients) == (7, "/srv/run", False, 3)


@pytest.mark.flower
def test_switching_the_engine_without_secagg_gives_the_in_process_result_bit_for_bit(sites, tmp_path):
    from medcodec.model.files import load_model
    from medcodec_fed.cli import main

    assert main(_cli_argv(sites, tmp_path / "in-process")) == 0
    assert (
        main(
            [
                *_cli_argv(sites, tmp_path / "flower"),
                "--engine",
                "flower",
                "--no-secagg",
                "--min-available-clients",
                "3",
            ]
        )
        == 0
    )
    got, want = _params(tmp_path / "flower"), _params(tmp_path / "in-process")
    assert all(np.array_equal(got[k], want[k]) for k in want)
    docs = [json.loads((tmp_path / d / runfolder.METRICS).read_text()) for d in ("flower", "in-process")]
    assert [r["accepted"] for r in docs[0]["rounds"]] == [["site0", "site1", "site2"]] * 2
    assert docs[0]["engine"].startswith("flower") and docs[0]["flower"]["secagg"] is False
    # the same activation ranges too: the model files differ only in their metadata
    models = [load_model(str(tmp_path / d / doc["model"])) for d, doc in zip(("flower", "in-process"), docs)]
    assert models[0].meta["activation_max"] == models[1].meta["activation_max"]


@pytest.mark.flower
def test_simulation_with_secagg_recovers_a_site_that_drops_out_while_training(sites, tmp_path):
    config = replace(TINY, site_dropout={"site2": 1.0})  # site2 fails every round, after sharing its keys
    options = flower.FlowerOptions(out=str(tmp_path / "flower"), secagg=True, min_available_clients=3)
    result = flower.run_simulation(sites, config, options, say=lambda _: None)
    for rec in result.metrics["rounds"]:
        assert rec["accepted"] == ["site0", "site1"] and rec["failures"] and not rec["kept_previous"]
    engine.run(sites, replace(config, export=False), tmp_path / "in-process", say=lambda _: None)
    assert_matches_in_process(
        _params(tmp_path / "flower"), _params(tmp_path / "in-process"), config, secagg_tolerance(config, options, 2)
    )


@pytest.mark.flower
def test_simulation_with_secagg_and_client_side_dp_records_its_parameters(sites, tmp_path):
    # No noise and a clipping norm no update reaches: the DP path must not change the result.
    options = flower.FlowerOptions(
        out=str(tmp_path / "flower"),
        secagg=True,
        min_available_clients=3,
        dp="client",
        dp_noise_multiplier=0.0,
        dp_clipping_norm=1e6,
    )
    result = flower.run_simulation(sites, TINY, options, say=lambda _: None)
    assert result.metrics["flower"]["dp"]["wrapper"].endswith("DifferentialPrivacyClientSideFixedClipping")
    assert result.metrics["flower"]["dp"]["noise_stdev"] == 0.0
    engine.run(sites, replace(TINY, export=False), tmp_path / "in-process", say=lambda _: None)
    assert_matches_in_process(
        _params(tmp_path / "flower"), _params(tmp_path / "in-process"), TINY, secagg_tolerance(TINY, options, 3)
    )


@pytest.mark.flower
def test_simulation_rejects_a_hostile_site_every_round_and_ends_with_the_honest_only_model(sites, tmp_path):
    from medcodec.model.files import load_model

    config = replace(TINY, drill_hostile={"site2": "huge"})  # the fault drill: site2 sends 1e30 everywhere
    options = flower.FlowerOptions(out=str(tmp_path / "flower"), secagg=False, min_available_clients=3)
    lines: list[str] = []
    result = flower.run_simulation(sites, config, options, say=lines.append)
    assert result.metrics["drill"] == config.drill() and config.drill()["note"] in lines
    assert load_model(str(result.model)).meta["federated"]["drill"] == config.drill()
    assert [r["round"] for r in result.metrics["rounds"]] == [1, 2]
    for rec in result.metrics["rounds"]:
        assert rec["accepted"] == ["site0", "site1"] and not rec["failures"] and not rec["kept_previous"]
        assert rec["train"]["site2"]["num_samples"] == TINY.local_steps * TINY.batch  # it did reply, and was refused
        (rej,) = rec["rejected"]
        assert rej["site"] == "site2" and "distance" in rej["reason"]
    # Exactly the model of a federation of the honest sites alone (site indices 0 and 1 in both).
    engine.run(sites[:2], replace(TINY, export=False), tmp_path / "honest", say=lambda _: None)
    got, want = _params(tmp_path / "flower"), _params(tmp_path / "honest")
    assert all(np.array_equal(got[k], want[k]) for k in want)


# --- the table prior job ------------------------------------------------------------------------


class _TablesGrid:
    """A grid without Flower's runtime: node ``i`` answers with the real tables ClientApp, or with
    what ``replies`` gives for it (a function of the asking message)."""

    def __init__(self, client, n: int, replies=None) -> None:
        self.client, self.n, self.replies = client, n, replies or {}

    def get_node_ids(self):
        return list(range(100, 100 + self.n))

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import Context, RecordDict

        out = []
        for i, m in enumerate(messages):
            assert m.metadata.message_type == flower.TABLES_MESSAGE
            if i in self.replies:
                out.append(self.replies[i](m))
                continue
            context = Context(
                run_id=1,
                node_id=m.metadata.dst_node_id,
                node_config={"partition-id": i},
                state=RecordDict(),
                run_config={},
            )
            out.append(self.client(m, context))
        return out


@pytest.fixture
def task_identity(monkeypatch):
    """Messages need the identity Flower's runtime gives a task."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_the_tables_job_sums_valid_counts_refuses_the_rest_and_equals_the_in_process_prior(
    sites, tmp_path, task_identity
):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

    from medcodec.coding.priors import load_prior
    from medcodec_fed.tables import federate_tables

    def forged(msg):  # counts under a name no group key has
        counts = ArrayRecord({"../../etc/tokens": Array(np.ones((3, 3), np.int64))})
        return Message(RecordDict({"counts": counts, "site": ConfigRecord({"site": "x", "volumes": 1})}), reply_to=msg)

    def failed(msg):
        return Message(Error(code=1, reason="the site's disk is full"), reply_to=msg)

    client = flower.make_tables_client_app(sites, tmp_path / "work")
    said: list[str] = []
    path = flower.serve_tables(_TablesGrid(client, 3, {2: forged}), tmp_path / "server", say=said.append)
    assert any("refused" in line and "unknown name" in line for line in said)
    want = federate_tables(sites[:2], tmp_path / "in-process")
    assert path.name == want.name and path.read_bytes() == want.read_bytes()
    assert load_prior(path).meta["sites"] == {"site0": 1, "site1": 1}
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["site0", "site1"]  # counts stay at the sites

    with pytest.raises(RuntimeError, match="1 sites sent valid counts, 2 are needed"):
        flower.serve_tables(_TablesGrid(client, 3, {1: forged, 2: failed}), tmp_path / "none", say=said.append)
    assert "the site's disk is full" in said[-1] and not (tmp_path / "none").exists()


def test_the_tables_app_folder_is_a_valid_flower_app(tmp_path):
    from flwr.common.config import validate_config

    from medcodec_fed.cli import main

    assert main(["tables-app", str(tmp_path / "app"), "--out", "/srv/tables", "--min-sites", "3"]) == 0
    doc = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    ok, errors, warnings = validate_config(doc, check_module=True, project_dir=tmp_path / "app")
    assert ok and not warnings, (errors, warnings)
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "medcodec_fed.flower.apps:tables_server_app",
        "clientapp": "medcodec_fed.flower.apps:tables_client_app",
    }
    assert doc["tool"]["flwr"]["app"]["config"] == {"out": "/srv/tables", "min-sites": 3, "timeout": 0.0}
    with pytest.raises(ValueError, match="min-sites"):
        flower.write_tables_app(tmp_path / "bad", "/srv/t", min_sites=0)


@pytest.mark.flower
def test_the_tables_job_in_the_simulation_writes_the_in_process_prior_byte_for_byte(sites, tmp_path, capsys):
    from medcodec_fed.cli import main

    argv = [x for s in sites for x in ("--site", f"{s.name}={s.train[0].parent}")]
    assert main(["tables", *argv, "--out", str(tmp_path / "in-process")]) == 0
    assert main(["tables", *argv, "--out", str(tmp_path / "flower"), "--engine", "flower"]) == 0
    got, want = (sorted((tmp_path / d).glob("tables-*.mct")) for d in ("flower", "in-process"))
    assert len(got) == len(want) == 1 and got[0].read_bytes() == want[0].read_bytes()
    assert "3 sites: site0 (2 volumes)" in capsys.readouterr().out
