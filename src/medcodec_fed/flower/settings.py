"""Settings of the Flower engine, its run config and the Flower app folder: what needs no flwr.

The deployment tools (``medcodec-fed flower-app``) and the checks of a run's settings use this
module alone; :mod:`medcodec_fed.flower.apps` holds every use of the ``flwr`` API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import RunConfig, check_field_types

__all__ = [
    "FLWR_REQUIREMENT",
    "FlowerOptions",
    "app_run_config",
    "check_flower_config",
    "settings_from_run_config",
    "write_app",
    "write_tables_app",
]

#: The Flower versions :mod:`medcodec_fed.flower.apps` is written against (the ``flower`` extra pins the same).
FLWR_REQUIREMENT = "flwr>=1.42,<1.43"
FLWR_RANGE = ((1, 42), (1, 43))

# --- settings --------------------------------------------------------------------------------

#: RunConfig fields that do not apply to the Flower engine: aggregation is FedAvg (robust
#: aggregation needs every update), personalization, baselines and the final evaluation of
#: exported models are in-process only, and the Flower engine always exports.
IN_PROCESS_ONLY = frozenset({"aggregation", "trim", "local_groups", "baselines", "final_crop", "export"})
#: The fields it takes from the run config: every other one.
_RUN_KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in IN_PROCESS_ONLY)
#: The per-site settings among them, which Flower's scalar-only run config holds as a
#: string "NAME=VALUE,NAME=VALUE", and the type of their values.
_PER_SITE_KEYS = {"site_dropout": float, "drill_hostile": str}
_DP_MODES = ("off", "client", "server")


@dataclass(frozen=True)
class FlowerOptions:
    """Settings of the Flower engine beyond :class:`~medcodec_fed.config.RunConfig`.

    Attributes:
        out: Run folder on the machine that runs the ServerApp (the coordinator).
        secagg: Secure aggregation with SecAgg+ (the server sees only the sum of the updates).
        secagg_shares: SecAgg+ ``num_shares``, as a fraction of the sampled sites (1.0: all).
        secagg_threshold: SecAgg+ ``reconstruction_threshold``, as a fraction of the shares
            (at least 2). Sites that drop out are recovered while this many of their
            neighbours remain.
        secagg_clipping_range: SecAgg+ clips every weighted parameter to +-this before
            quantizing; a site refuses to send an update that would be clipped.
        secagg_quantization_range: SecAgg+ quantization levels (2**22 by default).
        secagg_max_weight: The largest sample count a site may report (SecAgg+ ``max_weight``);
            0 takes ``local_steps * batch``, every site's count with ``local_steps``.
        secagg_timeout: Seconds each SecAgg+ stage waits for replies (0: until every sampled
            site answered or was found offline by the SuperLink).
        min_fit_clients: Sites needed to train in a round (SecAgg+ needs 2).
        min_available_clients: Sites that must be connected before a round starts.
        dp: Central differential privacy: "off", "client" (client-side fixed clipping, works
            with SecAgg+) or "server" (server-side fixed clipping; not with SecAgg+).
        dp_noise_multiplier: Gaussian noise multiplier of the DP wrapper.
        dp_clipping_norm: L2 clipping norm of each site's update (the change of the parameters).
        dp_sampled_clients: ``num_sampled_clients`` of the DP wrapper (0: ``min_fit_clients``);
            the noise standard deviation is multiplier x norm / this.
    """

    out: str = "medcodec-fed-flower"
    secagg: bool = True
    secagg_shares: float = 1.0
    secagg_threshold: float = 0.5
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 1 << 22
    secagg_max_weight: float = 0.0
    secagg_timeout: float = 0.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    dp: str = "off"
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 0.0
    dp_sampled_clients: int = 0

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check_field_types(self)  # a [flower] table can hold any type
        require(0 < self.secagg_shares <= 1, "secagg-shares must be in (0, 1]")
        require(0 < self.secagg_threshold <= 1, "secagg-threshold must be in (0, 1]")
        require(self.secagg_clipping_range > 0, "secagg-clipping-range must be > 0")
        require(self.secagg_quantization_range >= 2, "secagg-quantization-range must be >= 2")
        require(self.secagg_max_weight >= 0 and self.secagg_timeout >= 0, "secagg-max-weight/timeout must be >= 0")
        require(self.min_fit_clients >= 1, "min-fit-clients must be >= 1")
        require(self.min_available_clients >= self.min_fit_clients, "min-available-clients must be >= min-fit-clients")
        require(not self.secagg or self.min_fit_clients >= 2, "SecAgg+ needs min-fit-clients >= 2")
        require(self.dp in _DP_MODES, f"dp must be one of {_DP_MODES}, got {self.dp!r}")
        if self.dp != "off":
            require(self.dp_noise_multiplier >= 0, "dp-noise-multiplier must be >= 0")
            require(self.dp_clipping_norm > 0, "dp-clipping-norm must be > 0 when dp is on")
            require(self.dp_sampled_clients >= 0, "dp-sampled-clients must be >= 0")
        if self.dp == "server" and self.secagg:
            raise ValueError(
                "dp='server' clips each site's update at the server, which SecAgg+ hides (it would clip "
                "only the sum): use dp='client' with SecAgg+, or turn SecAgg+ off"
            )

    def max_weight(self, config: RunConfig) -> float:
        """SecAgg+'s ``max_weight``: the option, or every site's sample count with ``local_steps``."""
        if self.secagg_max_weight:
            return float(self.secagg_max_weight)
        return float(config.local_steps * config.batch) if config.local_epochs is None else 1000.0

    def dp_record(self) -> dict[str, Any] | None:
        """The DP settings as recorded in metrics.json and the model file (None when off)."""
        if self.dp == "off":
            return None
        sampled = self.dp_sampled_clients or self.min_fit_clients
        # The wrapper :mod:`medcodec_fed.flower.apps` uses for the mode.
        wrapper = "Client" if self.dp == "client" else "Server"
        return {
            "mode": self.dp,
            "wrapper": f"flwr.server.strategy.DifferentialPrivacy{wrapper}SideFixedClipping",
            "noise_multiplier": self.dp_noise_multiplier,
            "clipping_norm": self.dp_clipping_norm,
            "num_sampled_clients": sampled,
            "noise_stdev": self.dp_noise_multiplier * self.dp_clipping_norm / sampled,
        }


def check_flower_config(config: RunConfig, options: FlowerOptions | None = None) -> None:
    """Refuse the in-process-only settings of ``config`` (and those ``options`` rule out).

    Raises:
        ValueError: Robust aggregation (needs the individual updates, which SecAgg+ hides;
            the Flower engine averages), personalization, baselines, or a hostile-update
            drill under SecAgg+ (it rehearses the screening of each update, which SecAgg+ hides).
    """
    if config.drill_hostile and options is not None and options.secagg:
        raise ValueError(
            "drill-hostile rehearses the server's screening of each update, which SecAgg+ hides (under SecAgg+ "
            "the defences are each site's own check and SecAgg+'s clipping): turn SecAgg+ off for the drill"
        )
    if config.aggregation != "fedavg":
        raise ValueError("the Flower engine aggregates with FedAvg only (median/trimmed-mean need every update)")
    if config.local_groups:
        raise ValueError("local-groups (personalization) is supported by the in-process engine only")
    if config.baselines:
        raise ValueError("baselines are trained by the in-process engine only")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def app_run_config(config: RunConfig, options: FlowerOptions) -> dict[str, bool | int | float | str]:
    """The ``[tool.flwr.app.config]`` table for ``config`` and ``options`` (kebab-case keys).

    Flower's run config holds only scalars: no ``local-epochs`` (or ``max-samples``) is 0,
    no ``init`` is "", and a per-site setting (``site-dropout``, ``drill-hostile``) is a
    string ``"NAME=VALUE,NAME=VALUE"``.
    """
    check_flower_config(config, options)
    out: dict[str, bool | int | float | str] = {}
    for name in _RUN_KEYS:
        value = getattr(config, name)
        if name in _PER_SITE_KEYS:
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        elif name == "local_epochs":
            value = 0.0 if value is None else float(value)
        elif name == "max_samples":
            value = 0 if value is None else int(value)
        elif name == "init":
            value = value or ""
        out[_kebab(name)] = value
    for f in fields(FlowerOptions):
        out[_kebab(f.name)] = getattr(options, f.name)
    return out


def settings_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerOptions]:
    """Settings from a Flower run config (kebab- or snake-case keys; missing keys take defaults).

    ``flwr.simulation.run_simulation`` passes an empty run config, so every key is optional.

    Raises:
        ValueError: An unknown key or a bad value.
    """
    run_names = set(_RUN_KEYS)
    option_names = {f.name for f in fields(FlowerOptions)}
    run: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name in run_names:
            run[name] = value
        elif name in option_names:
            opts[name] = value
        else:
            raise ValueError(f"unknown run-config key {key!r}")
    if "local_epochs" in run:
        run["local_epochs"] = float(run["local_epochs"]) or None
    if "max_samples" in run:
        run["max_samples"] = int(run["max_samples"]) or None
    if "init" in run:
        run["init"] = run["init"] or None
    for name, kind in _PER_SITE_KEYS.items():
        if isinstance(run.get(name), str):
            pairs = [p.partition("=") for p in run[name].split(",") if p.strip()]
            run[name] = {k.strip(): kind(v.strip()) for k, _, v in pairs}
    for name in ("secagg_quantization_range", "min_fit_clients", "min_available_clients", "dp_sampled_clients"):
        if name in opts:
            opts[name] = int(opts[name])
    config, options = RunConfig.from_mapping(run), FlowerOptions(**opts)
    check_flower_config(config, options)
    return config, options


# --- the Flower app folder (deployment engine) -----------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these values


def write_app(folder: str | os.PathLike, config: RunConfig, options: FlowerOptions) -> Path:
    """Write the Flower app folder ``flwr run`` submits: one ``pyproject.toml``.

    The app holds no code: its components name :data:`server_app` and
    :data:`client_app` of this module, which must be installed (``medcodec[flower]``)
    on the coordinator and on every site. ``[tool.flwr.app.config]`` holds the run
    settings; ``flwr run FOLDER CONNECTION --run-config "rounds=20 out='/srv/runs/a'"``
    overrides them.

    Returns:
        The written ``pyproject.toml``.
    """
    return _write_pyproject(folder, "", app_run_config(config, options))


def write_tables_app(folder: str | os.PathLike, out: str, *, min_sites: int = 2, timeout: float = 0) -> Path:
    """Write the Flower app folder of the table prior job (``medcodec_fed.tables``): its components
    are ``tables_server_app`` and ``tables_client_app``; the run config holds ``out`` (the
    coordinator's folder for the prior file), ``min-sites`` and ``timeout`` (seconds to wait for
    them, 0: no limit).

    Raises:
        ValueError: ``min_sites`` < 1 or a negative ``timeout``.
    """
    if min_sites < 1 or timeout < 0:
        raise ValueError(f"min-sites must be at least 1 and timeout non-negative, got {min_sites} and {timeout}")
    return _write_pyproject(
        folder, "tables_", {"out": str(out), "min-sites": int(min_sites), "timeout": float(timeout)}
    )


def _write_pyproject(folder: str | os.PathLike, prefix: str, table: dict[str, Any]) -> Path:
    from medcodec import __version__ as version

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# A Flower app that runs medcodec_fed (written by medcodec-fed).",
        "# Submit it with: flwr run <this folder> <connection>; see docs/DEPLOY.md.",
        "[project]",
        'name = "medcodec-fed"',
        f'version = "{version}"',
        'description = "Federated training of medcodec models (medcodec_fed on Flower)"',
        'license = "Apache-2.0"',
        f'dependencies = ["{FLWR_REQUIREMENT}", "medcodec[flower]"]',
        "",
        "[tool.flwr.app]",
        'publisher = "medcodec"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "medcodec_fed.flower.apps:{prefix}server_app"',
        f'clientapp = "medcodec_fed.flower.apps:{prefix}client_app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in table.items()),
        "",
    ]
    path = folder / "pyproject.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
