"""The Flower engine: the medcodec_fed core as a Flower ``ServerApp`` and ``ClientApp``.

Every use of the ``flwr`` API lives in this module, pinned to
:data:`~medcodec_fed.flower.settings.FLWR_REQUIREMENT`;
when Flower moves its API, this is the one file to change. The apps drive the same
functions as the in-process engine:

* the ``ClientApp`` (one per site, i.e. per SuperNode) rebuilds a
  :class:`~medcodec_fed.messages.GlobalModel` from what it receives, runs
  :func:`~medcodec_fed.local.train_site` / :func:`~medcodec_fed.local.evaluate_site`
  on the site's own folder, screens its own update with
  :func:`~medcodec_fed.aggregate.check_update` (under secure aggregation the server can
  no longer do it) and, in the last round, sends a
  :class:`~medcodec_fed.messages.SiteCalibration` for the model export;
* the ``ServerApp`` runs Flower's legacy ``DefaultWorkflow`` with ``FedAvg`` and,
  by default, ``SecAggPlusWorkflow`` (Flower 1.42 runs SecAgg+ only through that API),
  so the server only ever sees the sum of the updates. Without SecAgg+ it screens and
  averages with :func:`~medcodec_fed.aggregate.aggregate`, exactly as the in-process
  engine does. At the end it writes the same run folder: the content-hashed model file
  (exported with the element-wise maximum of the sites' activation ranges),
  ``metrics.json`` and ``checkpoint.pt``.

Optional central differential privacy uses Flower's wrappers:
``DifferentialPrivacyClientSideFixedClipping`` with ``fixedclipping_mod`` ("client":
every site clips its own update before it is masked, so it composes with SecAgg+) or
``DifferentialPrivacyServerSideFixedClipping`` ("server": the server clips each update,
which needs the individual updates and is refused together with SecAgg+). Its
parameters are recorded in ``metrics.json``.

What crosses the wire is what the message types allow: the parameter arrays in the
architecture's sorted name order, a sample count, the metric scalars named in
:data:`~medcodec_fed.messages.METRIC_NAMES`, the site's name and, for the export, one
``activation-max-N`` scalar per hidden synthesis layer. The server rebuilds and checks
the typed messages from them and refuses anything else.

Entry points: :data:`server_app` and :data:`client_app` (what ``flwr run`` loads, with
the settings of the run config), :func:`run_simulation` (Flower's simulation engine, used
by ``medcodec-fed run --engine flower``); the settings and the Flower app folder of the
deployment engine are :mod:`medcodec_fed.flower.settings`'.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from ..aggregate import aggregate, check_update, mean_metric
from ..config import RunConfig
from ..messages import (
    GlobalModel,
    MessageError,
    SiteCalibration,
    SiteEvaluation,
    SiteUpdate,
    calibration_layers,
    parameter_spec,
)
from ..sites import Site
from .settings import FLWR_RANGE, FLWR_REQUIREMENT, FlowerOptions, check_flower_config, settings_from_run_config

__all__ = [
    "SiteDropout",
    "UpdateRefused",
    "client_app",
    "TABLES_MESSAGE",
    "make_client_app",
    "make_server_app",
    "make_tables_client_app",
    "make_tables_server_app",
    "run_simulation",
    "run_tables_simulation",
    "serve",
    "serve_tables",
    "server_app",
    "site_from_node_config",
    "tables_client_app",
    "tables_server_app",
]

log = logging.getLogger("medcodec_fed")


def _check_flwr_version() -> None:
    found = tuple(int(x) for x in re.findall(r"\d+", flwr.__version__)[:2])
    if not FLWR_RANGE[0] <= found < FLWR_RANGE[1]:
        raise ImportError(f"medcodec_fed.flower.apps needs {FLWR_REQUIREMENT}, found flwr {flwr.__version__}")


_check_flwr_version()

# --- the wire format ---------------------------------------------------------------------------

_SITE = "site"
_ACT = "activation-max-"
_CALIBRATE = "calibrate"
_SETTINGS = "medcodec-settings"
_ROUND = "medcodec-round"
_SECAGG_CLIP = "medcodec-secagg-clipping-range"
_SECAGG_WEIGHT = "medcodec-secagg-max-weight"


def _names(arch: str) -> list[str]:
    return sorted(parameter_spec(arch))


def _arrays(names: list[str], ndarrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    if len(ndarrays) != len(names):
        raise MessageError(f"received {len(ndarrays)} arrays, the architecture has {len(names)} parameters")
    # Flower's own arithmetic (SecAgg+ dequantization, DP noise) may hand back float64.
    return {n: np.asarray(a, dtype=np.float32) for n, a in zip(names, ndarrays)}


def _split_metrics(arch: str, metrics: Mapping[str, Any]) -> tuple[str, dict[str, Any], tuple[float, ...] | None]:
    """(site, named scalars, activation ranges or None) of a reply's metrics."""
    site = metrics.get(_SITE)
    scalars = {k: v for k, v in metrics.items() if k != _SITE and not k.startswith(_ACT)}
    acts = {k: v for k, v in metrics.items() if k.startswith(_ACT)}
    ranges = None
    if acts:
        n = calibration_layers(arch)
        if set(acts) != {f"{_ACT}{i}" for i in range(n)}:
            raise MessageError(f"activation ranges must be {_ACT}0..{n - 1}, got {sorted(acts)}")
        ranges = tuple(acts[f"{_ACT}{i}"] for i in range(n))
    return site, scalars, ranges


# --- the ClientApp -----------------------------------------------------------------------------


class SiteDropout(RuntimeError):
    """A site leaves the round (the simulated ``dropout`` / ``site-dropout`` of the settings)."""


class UpdateRefused(RuntimeError):
    """A site refuses to send an update that the server could not screen (non-finite, ...)."""


@lru_cache(maxsize=8)
def _site_data(site: Site, eval_crop: int):
    from ..sites import load_site

    return load_site(site, eval_crop=eval_crop)


def _name_index(name: str) -> int:
    """A stable site index from a site name (when the node config gives no ``partition-id``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def site_from_node_config(node_config: Mapping[str, Any]) -> tuple[Site, int]:
    """The site of a deployment SuperNode: ``--node-config "data-dir='/data' site-name='a' partition-id=0"``.

    ``data-dir`` is required; ``site-name`` defaults to the folder's name; ``partition-id``
    (the site's index in the seeds of its random choices; give 0, 1, 2, ... to reproduce an
    in-process run) defaults to a number derived from the name; ``hold-out`` (volumes held
    back for evaluation) to 1.

    Raises:
        ValueError: No ``data-dir``.
    """
    if not node_config.get("data-dir"):
        raise ValueError("this SuperNode has no data folder: start it with --node-config \"data-dir='/path'\"")
    folder = Path(str(node_config["data-dir"]))
    name = str(node_config.get("site-name") or _NAME_CHARS.sub("-", folder.resolve().name).strip("-.") or "site")
    index = int(node_config["partition-id"]) if "partition-id" in node_config else _name_index(name)
    return Site.from_folder(name, folder, hold_out=int(node_config.get("hold-out", 1))), index


class _SiteClient(NumPyClient):
    """One site: trains, evaluates and calibrates on its own data; sends only what the messages allow."""

    def __init__(self, site: Site, index: int) -> None:
        self.site = site
        self.index = index

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        raise RuntimeError("the server holds the initial parameters; a site never sends its own")

    def _job(self, parameters: list[np.ndarray], config: Mapping[str, Any]) -> tuple[RunConfig, GlobalModel]:
        import torch

        run = RunConfig.from_mapping(json.loads(str(config[_SETTINGS])))
        torch.set_num_threads(run.threads)
        names = _names(run.arch)
        return run, GlobalModel(run.arch, int(config[_ROUND]), _arrays(names, parameters))

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        from ..local import drill_update, train_site

        run, current = self._job(parameters, config)
        p = run.site_dropout.get(self.site.name, run.dropout)
        if p > 0 and _dropout_draw(run.seed, current.round, self.index) < p:
            raise SiteDropout(f"site {self.site.name!r} drops out of round {current.round}")
        data = _site_data(self.site, run.eval_crop)
        update, _ = train_site(current, self.site.name, data, run.local_config(), seed=run.seed, site_index=self.index)
        if self.site.name in run.drill_hostile:
            # A fault drill: this site plays a hostile one, which would not screen itself.
            update = drill_update(update, run.drill_hostile[self.site.name], current)
            reason = None
        else:
            reason = check_update(update, current)  # the screening the server cannot do under SecAgg+
        if reason is None and _SECAGG_CLIP in config:
            reason = _secagg_range_problem(update, float(config[_SECAGG_CLIP]), float(config[_SECAGG_WEIGHT]))
        if reason is not None:
            raise UpdateRefused(f"site {self.site.name!r} refuses to send its round-{current.round} update: {reason}")
        names = _names(run.arch)
        return [update.parameters[n] for n in names], update.num_samples, {_SITE: self.site.name, **update.metrics}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        from ..evaluate import quality_to_gain
        from ..local import calibrate_site, evaluate_site

        run, current = self._job(parameters, config)
        data = _site_data(self.site, run.eval_crop)
        evaluation = evaluate_site(current, self.site.name, data, quality_to_gain(run.quality))
        metrics: dict[str, Any] = {_SITE: self.site.name, **evaluation.metrics}
        if config.get(_CALIBRATE):
            cal = calibrate_site(
                current,
                self.site.name,
                data,
                patches=run.calib_patches,
                size=run.calib_size,
                seed=run.seed,
                site_index=self.index,
            )
            metrics.update({f"{_ACT}{i}": v for i, v in enumerate(cal.activation_max)})
        voxels = int(evaluation.metrics.get("voxels", 1))
        return float(evaluation.metrics.get("mse", 0.0)), max(voxels, 1), metrics


def _dropout_draw(seed: int, round_: int, index: int) -> float:
    from ..randomness import Purpose, derive_seed

    return float(np.random.default_rng(derive_seed(seed, round_, index, Purpose.DROPOUT)).random())


def _secagg_range_problem(update: SiteUpdate, clipping_range: float, max_weight: float) -> str | None:
    if update.num_samples > max_weight:
        return f"{update.num_samples} samples exceed SecAgg+'s max weight {max_weight:g} (secagg-max-weight)"
    scale = update.num_samples / max_weight
    worst = max(float(np.abs(v).max()) for v in update.parameters.values()) * scale
    if worst > clipping_range:
        return f"a weighted parameter of {worst:.3g} exceeds SecAgg+'s clipping range (secagg-clipping-range)"
    return None


def _only_with(record: str, mod: Callable) -> Callable:
    """``mod``, applied only to messages that carry config record/key ``record``."""

    def conditional(msg, context, call_next):
        content = msg.content
        present = record in content.config_records or any(
            record in rec for key, rec in content.config_records.items() if key.endswith("config")
        )
        return mod(msg, context, call_next) if present else call_next(msg, context)

    conditional.__name__ = f"{mod.__name__}_if_{record}"
    return conditional


def make_client_app(sites: Sequence[Site] | None = None) -> ClientApp:
    """The ClientApp; with ``sites``, node ``partition-id`` N plays ``sites[N]`` (simulation).

    Without ``sites`` each SuperNode's site comes from its node config
    (:func:`site_from_node_config`). SecAgg+ (``secaggplus_mod``) and DP clipping
    (``fixedclipping_mod``, inside it so a site clips before masking) apply to the
    messages that ask for them.
    """
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    chosen = tuple(sites) if sites is not None else None

    def client_fn(context: Context):
        if chosen is not None:
            index = int(context.node_config["partition-id"])
            return _SiteClient(chosen[index], index).to_client()
        site, index = site_from_node_config(context.node_config)
        return _SiteClient(site, index).to_client()

    mods = [_only_with(RECORD_KEY_CONFIGS, secaggplus_mod), _only_with(KEY_CLIPPING_NORM, fixedclipping_mod)]
    return ClientApp(client_fn=client_fn, mods=mods)


# --- the ServerApp -----------------------------------------------------------------------------


class _Run:
    """The server's record of a run: rounds, sites seen, calibrations; writes the run folder."""

    def __init__(self, config: RunConfig, options: FlowerOptions, out: Path, say: Callable[[str], None]) -> None:
        self.config, self.options, self.out, self.say = config, options, out, say
        self.names = _names(config.arch)
        self.sites: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.calibrations: list[SiteCalibration] = []
        self.parameters: dict[str, np.ndarray] = {}

    def seen(self, site: str) -> None:
        if site not in self.sites:
            self.sites.append(site)

    def record(self, round_: int) -> dict[str, Any]:
        if not self.history or self.history[-1]["round"] != round_:
            # kept_previous until an aggregate is accepted (SecAgg+ may halt before aggregate_fit runs)
            self.history.append(
                {
                    "round": round_,
                    "sampled": [],
                    "dropped": [],
                    "accepted": [],
                    "rejected": [],
                    "kept_previous": True,
                    "num_samples": 0,
                    "capped": [],
                    "train": {},
                    "eval": {},
                    "global": {},
                    "seconds": 0.0,
                    "failures": [],
                    "secagg": self.options.secagg,
                }
            )
        return self.history[-1]

    def doc(self, **final: Any) -> dict[str, Any]:
        doc = {
            "format": "medcodec-fed-metrics/1",
            "engine": f"flower {flwr.__version__}",
            "model": None,
            "config": self.config.to_dict(),
            "drill": self.config.drill(),
            "flower": {**asdict(self.options), "dp": self.options.dp_record()},
            "sites": [{"name": s} for s in sorted(self.sites)],
            "rounds": self.history,
        }
        doc.update(final)
        return doc

    def write(self, next_round: int, **final: Any) -> dict[str, Any]:
        from medcodec.files.atomic import write_json

        from ..runfolder import CHECKPOINT, METRICS, save_checkpoint

        doc = self.doc(**final)
        state = {
            "version": 1,
            "engine": "flower",
            "config": self.config.to_dict(),
            "sites": doc["sites"],
            "next_round": next_round,
            "parameters": self.parameters,
            "local": {},
            "history": self.history,
            "baselines": None,
        }
        save_checkpoint(self.out / CHECKPOINT, state)
        write_json(self.out / METRICS, doc, nonfinite_as_null=True)
        return doc


class _FedAvg(FedAvg):
    """Flower's FedAvg, recording every round into the run and using medcodec_fed's checks.

    Without SecAgg+, the replies become :class:`SiteUpdate` messages and
    :func:`~medcodec_fed.aggregate.aggregate` screens and averages them (sorted by site
    name, so the sum's order is fixed). With SecAgg+, every reply carries the same
    unmasked weighted mean; it is checked (shapes, finite values) and stored as float32.
    """

    def __init__(self, run: _Run, initial: dict[str, np.ndarray]) -> None:
        config, options = run.config, run.options
        super().__init__(
            fraction_fit=config.fraction,
            fraction_evaluate=1.0,
            min_fit_clients=options.min_fit_clients,
            min_evaluate_clients=1,
            min_available_clients=options.min_available_clients,
            initial_parameters=ndarrays_to_parameters([initial[n] for n in run.names]),
            on_fit_config_fn=self._fit_config,
            on_evaluate_config_fn=self._evaluate_config,
            accept_failures=True,
        )
        self.run = run
        self.current: dict[str, np.ndarray] = dict(initial)
        self.round_started = time.perf_counter()

    def _base_config(self, server_round: int) -> dict[str, Any]:
        return {_SETTINGS: json.dumps(self.run.config.to_dict()), _ROUND: server_round}

    def _fit_config(self, server_round: int) -> dict[str, Any]:
        cfg = self._base_config(server_round)
        if self.run.options.secagg:
            cfg[_SECAGG_CLIP] = self.run.options.secagg_clipping_range
            cfg[_SECAGG_WEIGHT] = self.run.options.max_weight(self.run.config)
        return cfg

    def _evaluate_config(self, server_round: int) -> dict[str, Any]:
        return {**self._base_config(server_round), _CALIBRATE: server_round == self.run.config.rounds}

    def configure_fit(self, server_round, parameters, client_manager):
        self.round_started = time.perf_counter()
        self.current = _arrays(self.run.names, parameters_to_ndarrays(parameters))
        # FedAvg sizes the sample from the sites connected *now*, before it waits for
        # min_available_clients; nodes register from a background thread, so wait first
        # or a round may sample fewer sites than are coming.
        client_manager.wait_for(self.min_available_clients)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        run = self.run
        rec = run.record(server_round)
        reference = GlobalModel(run.config.arch, server_round, self.current)
        replies: list[tuple[str, Any]] = []
        for _, res in results:
            try:
                site, scalars, _ = _split_metrics(run.config.arch, res.metrics)
                SiteEvaluation(site, server_round, scalars)  # the same name/scalar rules as every message
            except MessageError as exc:
                note = " (its parameters are already in the SecAgg+ sum)" if run.options.secagg else ""
                who = str(res.metrics.get(_SITE, "?"))[:64]
                rec["rejected"].append({"site": who, "reason": f"malformed: {exc}{note}"})
                log.warning("round %d: rejected a malformed reply: %s%s", server_round, exc, note)
                continue
            run.seen(site)
            replies.append((site, res))
            rec["train"][site] = {**scalars, "num_samples": int(res.num_examples)}
        reasons = []  # Flower's SecAgg+ workflow may report one failure twice: keep distinct ones
        for failure in failures:
            reason = str(failure[1].status.message) if isinstance(failure, tuple) else str(failure)
            if reason[:300] not in reasons:
                reasons.append(reason[:300])
                log.warning("round %d: a site failed: %s", server_round, reason[:300])
        rec["failures"] = reasons
        replied = sorted(site for site, _ in replies)
        rec["sampled"] = replied  # Flower samples the nodes; the server learns names from replies
        rec["dropped"] = sorted(set(run.sites) - set(replied))
        if run.options.secagg:
            params = self._secagg_mean(reference, [res for _, res in replies], rec)
            accepted = replied if params is not None else []
            num = sum(int(res.num_examples) for _, res in replies) if params is not None else 0
        else:
            updates = []
            for site, res in sorted(replies, key=lambda r: r[0]):
                metrics = {k: v for k, v in rec["train"][site].items() if k != "num_samples"}
                try:
                    arrays = _arrays(run.names, parameters_to_ndarrays(res.parameters))
                    updates.append(
                        SiteUpdate(
                            site=site,
                            arch=run.config.arch,
                            round=server_round,
                            parameters=arrays,
                            num_samples=int(res.num_examples),
                            metrics=metrics,
                        )
                    )
                except MessageError as exc:
                    rec["rejected"].append({"site": site, "reason": f"malformed update: {exc}"})
                    log.warning("round %d: rejected the update from site %r: %s", server_round, site, exc)
            result = aggregate(reference, updates, method="fedavg", max_samples=run.config.sample_cap())
            rec["rejected"].extend({"site": r.site, "reason": r.reason} for r in result.rejected)
            params, accepted, num = result.parameters, list(result.accepted), result.num_samples
            rec["capped"] = list(result.capped)
        rec["accepted"], rec["num_samples"] = accepted, num
        rec["kept_previous"] = params is None
        if params is None:
            log.warning("round %d: no update accepted; the global model is kept", server_round)
            return None, {}
        return ndarrays_to_parameters([params[n] for n in run.names]), {}

    def _secagg_mean(self, reference: GlobalModel, replies: list, rec: dict) -> dict[str, np.ndarray] | None:
        if not replies:
            return None
        mean = _arrays(self.run.names, parameters_to_ndarrays(replies[0].parameters))
        for name, ref in reference.parameters.items():
            if mean[name].shape != ref.shape or not np.isfinite(mean[name]).all():
                rec["rejected"].append({"site": "(sum)", "reason": f"the aggregate of {name!r} is malformed"})
                return None
        return mean

    def configure_evaluate(self, server_round, parameters, client_manager):
        # The parameters after aggregation (and after the DP wrapper's noise): the round's result.
        self.run.parameters = _arrays(self.run.names, parameters_to_ndarrays(parameters))
        client_manager.wait_for(self.min_available_clients)  # as in configure_fit
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        run = self.run
        rec = run.record(server_round)
        final = server_round == run.config.rounds
        for _, res in results:
            try:
                site, scalars, ranges = _split_metrics(run.config.arch, res.metrics)
                evaluation = SiteEvaluation(site, server_round, scalars)
                cal = SiteCalibration(site, run.config.arch, ranges) if ranges is not None else None
            except MessageError as exc:
                log.warning("round %d: rejected a malformed evaluation: %s", server_round, exc)
                continue
            run.seen(site)
            rec["eval"][site] = dict(evaluation.metrics)
            if final and cal is not None:
                run.calibrations = [c for c in run.calibrations if c.site != site] + [cal]
        evals = rec["eval"].values()
        losses = [rec["train"][s]["loss"] for s in rec["accepted"] if "loss" in rec["train"].get(s, {})]
        rec["global"] = {
            "loss": mean_metric(losses),
            "psnr": mean_metric([e["psnr"] for e in evals if "psnr" in e]),
            "bpv": mean_metric([e["bpv"] for e in evals if "bpv" in e]),
            "ssim": mean_metric([e["ssim"] for e in evals if "ssim" in e]),
        }
        rec["seconds"] = time.perf_counter() - self.round_started
        run.write(server_round + 1)
        run.say(_round_line(rec, run.config.rounds))
        return super().aggregate_evaluate(server_round, results, failures)


def _round_line(rec: dict[str, Any], rounds: int) -> str:
    g = rec["global"]
    parts = [f"round {rec['round']}/{rounds}", f"trained {len(rec['accepted'])} sites"]
    if rec["dropped"]:
        parts.append("dropped " + ",".join(rec["dropped"]))
    if rec["failures"]:
        parts.append(f"{len(rec['failures'])} failed")
    if rec["kept_previous"]:
        parts.append("no update accepted: global model kept")
    elif g.get("loss") is not None:
        parts.append(f"loss {g['loss']:.4f}")
    if g.get("psnr") is not None:
        parts.append(f"psnr {g['psnr']:.2f} dB  bpv {g['bpv']:.4f}")
    parts.append(f"{rec['seconds']:.1f} s")
    return "  ".join(parts)


def _strategy(run: _Run, initial: dict[str, np.ndarray]):
    inner = _FedAvg(run, initial)
    dp = run.options.dp_record()
    if dp is None:
        return inner
    wrapper = (
        DifferentialPrivacyClientSideFixedClipping
        if run.options.dp == "client"
        else DifferentialPrivacyServerSideFixedClipping
    )
    return wrapper(
        inner,
        noise_multiplier=dp["noise_multiplier"],
        clipping_norm=dp["clipping_norm"],
        num_sampled_clients=dp["num_sampled_clients"],
    )


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, tolerant of sites that leave before sharing their keys.

    In flwr 1.42 a site that drops out before the "share keys" stage completes stays in
    the sampled set, so the "unmask" stage asks the others for shares of its secret key,
    which they never received: every reply fails and the round's aggregation halts. Such
    a site has contributed no key share and no mask to anyone, so after that stage only
    the sites that shared their keys count as sampled; a site that drops out later (while
    training, the long step) is recovered from its neighbours' shares, as SecAgg+ intends.
    """

    def share_keys_stage(self, grid, context, state) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


def serve(grid, context: Context, config: RunConfig, options: FlowerOptions, *, say: Callable[[str], None] = print):
    """The ServerApp's work: run the rounds on ``grid``, then write the run folder.

    Raises:
        FileExistsError: The run folder already holds a run (the Flower engine does not resume).
        RuntimeError: No site sent activation ranges in the last round (no model can be exported).
    """
    import torch

    from ..runfolder import CHECKPOINT

    check_flower_config(config, options)
    out = Path(options.out)
    if (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out / CHECKPOINT} exists: the Flower engine does not resume; choose another out")
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _serve(grid, context, config, options, out, say)
    finally:
        torch.set_num_threads(threads)  # the simulation runs the ServerApp in the caller's process


def _serve(grid, context: Context, config: RunConfig, options: FlowerOptions, out: Path, say: Callable[[str], None]):
    from medcodec.training.export import export_model

    from ..engine import initial_parameters
    from ..local import build_model
    from ..model_files import combine_calibrations, model_meta
    from ..runfolder import file_sha256

    initial = initial_parameters(config)
    run = _Run(config, options, out, say)
    run.parameters = dict(initial)
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=config.rounds), strategy=_strategy(run, initial)
    )
    fit_workflow = None
    if options.secagg:
        fit_workflow = _SecAggPlus(
            num_shares=float(options.secagg_shares),
            reconstruction_threshold=float(options.secagg_threshold),
            max_weight=options.max_weight(config),
            clipping_range=float(options.secagg_clipping_range),
            quantization_range=int(options.secagg_quantization_range),
            timeout=options.secagg_timeout or None,
        )
    secagg = "on" if options.secagg else "off"
    dp = f", DP {options.dp}" if options.dp != "off" else ""
    say(f"flower {flwr.__version__}: {config.rounds} rounds of {config.arch}, SecAgg+ {secagg}{dp}")
    if config.drill():
        say(config.drill()["note"])
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    model_path = None
    if config.export:
        if not run.calibrations:
            run.write(config.rounds + 1)
            raise RuntimeError("no site sent its activation ranges in the last round: the model cannot be exported")
        meta = model_meta(config, sorted(run.sites), engine=f"flower {flwr.__version__}")
        meta["federated"]["secagg"] = options.secagg
        meta["federated"]["dp"] = options.dp_record()
        meta["federated"]["calibrated_by"] = sorted(c.site for c in run.calibrations)
        act_max = combine_calibrations(sorted(run.calibrations, key=lambda c: c.site), config.arch)
        model_path = export_model(build_model(config.arch, run.parameters), out, activation_max=act_max, meta=meta)
        say(f"model: {model_path}")
    doc = run.write(
        config.rounds + 1,
        model=model_path.name if model_path else None,
        model_sha256=file_sha256(model_path) if model_path else None,
        site_models={},
        final={},
        baselines=None,
    )
    if config.plots:
        from ..plots import draw_all

        for p in draw_all(doc, out):
            say(f"plot: {p}")
    return doc


def make_server_app(
    config: RunConfig | None = None, options: FlowerOptions | None = None, *, say: Callable[[str], None] = print
) -> ServerApp:
    """The ServerApp; with ``config``/``options`` it ignores the run config (simulation from Python)."""
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        if config is not None and options is not None:
            serve(grid, context, config, options, say=say)
        else:
            serve(grid, context, *settings_from_run_config(context.run_config), say=say)

    return app


#: What ``flwr run`` loads (``medcodec_fed.flower.apps:server_app`` / ``:client_app``).
server_app = make_server_app()
client_app = make_client_app()


# --- the simulation engine ---------------------------------------------------------------------


def _backend(n_sites: int) -> dict[str, Any]:
    """The simulation's Ray settings: one CPU per site, quiet logs."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(2, n_sites), "num_gpus": 0, "logging_level": "error", "log_to_driver": False},
    }


def run_simulation(
    sites: Sequence[Site],
    config: RunConfig,
    options: FlowerOptions | None = None,
    *,
    say: Callable[[str], None] = print,
    backend_config: dict[str, Any] | None = None,
):
    """Run the federation in Flower's simulation engine (one process per site, on this machine).

    Site ``i`` is the simulation's node ``partition-id = i``, so with the same seed and no
    SecAgg+ the result equals the in-process engine's (with SecAgg+: within its quantization).

    Returns:
        A :class:`~medcodec_fed.engine.RunResult` for ``options.out``.

    Raises:
        ValueError: Settings the Flower engine refuses, or too few sites.
        ImportError: Ray (``flwr[simulation]``) is not installed.
        RuntimeError: The run ended without a model file (the log above says why).
    """
    import importlib.util

    from ..engine import RunResult
    from ..runfolder import METRICS

    if importlib.util.find_spec("ray") is None:
        raise ImportError("Flower's simulation engine needs flwr[simulation] (Ray): pip install 'medcodec[flower]'")
    from flwr.simulation import run_simulation as flower_run_simulation

    options = options or FlowerOptions()
    check_flower_config(config, options)
    names = [s.name for s in sites]
    if len(set(names)) != len(names) or len(names) < options.min_available_clients:
        raise ValueError(f"need {options.min_available_clients}+ sites with unique names, got {names}")
    out = Path(options.out)
    backend = backend_config or _backend(len(sites))
    flower_run_simulation(
        server_app=make_server_app(config, options, say=say),
        client_app=make_client_app(sites),
        num_supernodes=len(sites),
        backend_config=backend,
    )
    metrics = out / METRICS
    doc = json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else {}
    if not doc.get("model") and config.export:
        raise RuntimeError(f"the Flower simulation ended without a model file in {out}; see the log above")
    return RunResult(out, doc, out / doc["model"] if doc.get("model") else None)


# --- the table prior job -----------------------------------------------------------------------
#
# One round of Flower's Message API (not the legacy strategy): the server asks every connected
# site for its table counts (message type ``train.tables``), each site counts its own volumes
# (:func:`medcodec_fed.tables.count_site`) and replies with integer arrays named by group key and
# its name and volume count; the server rebuilds :class:`~medcodec_fed.tables.SiteCounts` (which
# refuses anything else), sums and writes the prior. SecAgg+ is not used: its masks work on
# quantized floats of one fixed layout, while each site's group keys depend on its volumes.

TABLES_MESSAGE = "train.tables"
_COUNTS, _TABLES_SITE = "counts", "site"


def _tables_site(context: Context, sites: Sequence[Site] | None, work_root: Path | None) -> tuple[Site, Path]:
    """The site a tables ClientApp plays and the folder its counts are kept in (at the site)."""
    if sites is not None:
        site = sites[int(context.node_config["partition-id"])]
    else:
        site, _ = site_from_node_config(context.node_config)
    if context.node_config.get("work-dir"):
        return site, Path(str(context.node_config["work-dir"]))
    root = work_root if work_root is not None else Path.home() / ".cache" / "medcodec-fed" / "tables"
    return site, root / site.name


def make_tables_client_app(sites: Sequence[Site] | None = None, work_root: str | Path | None = None) -> ClientApp:
    """The ClientApp of the table prior job; with ``sites``, node ``partition-id`` N plays ``sites[N]``.

    Without ``sites`` each SuperNode's site comes from its node config
    (:func:`site_from_node_config`); its counts are kept in node config ``work-dir``, else in
    ``work_root/<site>``, else ``~/.cache/medcodec-fed/tables/<site>``, so a site that is asked
    again counts only the volumes it has not counted yet.
    """
    from ..tables import count_site

    chosen = tuple(sites) if sites is not None else None
    root = Path(work_root) if work_root is not None else None
    app = ClientApp()

    @app.train("tables")
    def count(msg, context: Context):
        from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

        site, work = _tables_site(context, chosen, root)
        update = count_site(site, work)
        content = RecordDict(
            {
                _COUNTS: ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in update.counts.items()}),
                _TABLES_SITE: ConfigRecord({"site": update.site, "volumes": int(update.volumes)}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _site_counts(content) -> Any:
    """The :class:`~medcodec_fed.tables.SiteCounts` a reply carries.

    Raises:
        MessageError: Records missing or of the wrong kind, or counts :class:`SiteCounts` refuses.
    """
    from ..tables import SiteCounts

    try:
        about, arrays = content.config_records[_TABLES_SITE], content.array_records[_COUNTS]
    except KeyError as exc:
        raise MessageError(f"a reply lacks its {exc.args[0]!r} record") from None
    site, volumes = about.get("site"), about.get("volumes")
    if not isinstance(site, str) or not site or not isinstance(volumes, int) or isinstance(volumes, bool):
        raise MessageError("a reply names no site or no volume count")
    return SiteCounts(site, volumes, {name: arrays[name].numpy() for name in arrays})


def serve_tables(
    grid, out: str | Path, *, min_sites: int = 2, timeout: float | None = None, say: Callable[[str], None] = print
) -> Path:
    """The tables ServerApp's work: wait for ``min_sites`` sites, ask each for its counts once,
    refuse malformed replies, sum the rest and write the prior to ``out``; returns its path.

    Raises:
        RuntimeError: Fewer than ``min_sites`` sites replied with valid counts (nothing is written).
    """
    from flwr.app import ConfigRecord, Message, RecordDict

    from ..tables import write_federated_prior

    deadline = None if timeout is None else time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < min_sites:
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of the {min_sites} sites needed connected within {timeout:g} s")
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    say(f"flower {flwr.__version__}: asking {len(nodes)} sites for their table counts")
    asks = [
        Message(RecordDict({"config": ConfigRecord({"job": "tables"})}), dst_node_id=n, message_type=TABLES_MESSAGE)
        for n in nodes
    ]
    updates = []
    for reply in grid.send_and_receive(asks, timeout=timeout):
        if reply.has_error():
            say(f"a site sent no counts: {reply.error.reason}")
            continue
        try:
            update = _site_counts(reply.content)
        except MessageError as exc:
            say(f"refused a site's counts: {exc}")
            continue
        say(f"site {update.site}: {update.volumes} volumes counted")
        updates.append(update)
    if len(updates) < min_sites:
        raise RuntimeError(f"{len(updates)} sites sent valid counts, {min_sites} are needed: no prior written")
    path = write_federated_prior(updates, out)
    say(f"prior: {path}")
    return path


def make_tables_server_app(
    out: str | Path | None = None, *, min_sites: int = 2, say: Callable[[str], None] = print
) -> ServerApp:
    """The tables ServerApp; without ``out`` it reads ``out``, ``min-sites`` and ``timeout`` (s)
    from the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        if out is not None:
            serve_tables(grid, out, min_sites=min_sites, say=say)
            return
        rc = context.run_config
        if not rc.get("out"):
            raise ValueError("the tables job needs a run folder: --run-config \"out='/srv/runs/tables'\"")
        wait = float(rc.get("timeout", 0)) or None
        serve_tables(grid, str(rc["out"]), min_sites=int(rc.get("min-sites", 2)), timeout=wait, say=say)

    return app


#: What ``flwr run`` loads for the table prior job (``medcodec_fed.flower.apps:tables_server_app``).
tables_server_app = make_tables_server_app()
tables_client_app = make_tables_client_app()


def run_tables_simulation(
    sites: Sequence[Site], out: str | Path, *, say: Callable[[str], None] = print, min_sites: int | None = None
) -> Path:
    """The table prior job in Flower's simulation engine: site ``i`` is node ``partition-id = i``
    and keeps its counts in ``out/sites/<name>``, as in :func:`medcodec_fed.tables.federate_tables`,
    whose prior file it equals byte for byte.

    Raises:
        ValueError: Sites without unique names.
        ImportError: Ray (``flwr[simulation]``) is not installed.
        RuntimeError: The simulation ended without a prior file (the log above says why).
    """
    import importlib.util

    from medcodec.coding.priors import DEFAULT_PRIOR

    if importlib.util.find_spec("ray") is None:
        raise ImportError("Flower's simulation engine needs flwr[simulation] (Ray): pip install 'medcodec[flower]'")
    from flwr.simulation import run_simulation as flower_run_simulation

    names = [s.name for s in sites]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"need sites with unique names, got {names}")
    out = Path(out)
    before = set(out.glob(f"{DEFAULT_PRIOR}-*.mct"))
    written: list[Path] = []
    server = ServerApp()

    @server.main()
    def main(grid, context: Context) -> None:
        written.append(serve_tables(grid, out, min_sites=min_sites or len(sites), timeout=600.0, say=say))

    flower_run_simulation(
        server_app=server,
        client_app=make_tables_client_app(sites, out / "sites"),
        num_supernodes=len(sites),
        backend_config=_backend(len(sites)),
    )
    if not written:
        new = set(out.glob(f"{DEFAULT_PRIOR}-*.mct")) - before
        if not new:
            raise RuntimeError(f"the Flower simulation ended without a prior file in {out}; see the log above")
        written.append(sorted(new)[0])
    return written[0]
