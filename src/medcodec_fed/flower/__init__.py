"""The Flower engine (``flwr``): :mod:`~medcodec_fed.flower.settings` (what needs no flwr: the
options, the run config, the app folder) and :mod:`~medcodec_fed.flower.apps` (the ServerApp
and ClientApp, the simulation). The apps' names load flwr on first use (PEP 562), so the
settings work where flwr is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import (
    FLWR_REQUIREMENT,
    FlowerOptions,
    app_run_config,
    check_flower_config,
    settings_from_run_config,
    write_app,
    write_tables_app,
)

if TYPE_CHECKING:
    from .apps import (
        TABLES_MESSAGE,
        SiteDropout,
        UpdateRefused,
        client_app,
        make_client_app,
        make_server_app,
        make_tables_client_app,
        make_tables_server_app,
        run_simulation,
        run_tables_simulation,
        serve,
        serve_tables,
        server_app,
        site_from_node_config,
        tables_client_app,
        tables_server_app,
    )

_APPS = {
    "SiteDropout",
    "TABLES_MESSAGE",
    "UpdateRefused",
    "client_app",
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
}

__all__ = [
    "FLWR_REQUIREMENT",
    "FlowerOptions",
    "SiteDropout",
    "TABLES_MESSAGE",
    "UpdateRefused",
    "app_run_config",
    "check_flower_config",
    "client_app",
    "make_client_app",
    "make_server_app",
    "make_tables_client_app",
    "make_tables_server_app",
    "run_simulation",
    "run_tables_simulation",
    "serve",
    "serve_tables",
    "server_app",
    "settings_from_run_config",
    "site_from_node_config",
    "tables_client_app",
    "tables_server_app",
    "write_app",
    "write_tables_app",
]


def __getattr__(name: str):
    if name not in _APPS:
        raise AttributeError(f"module 'medcodec_fed.flower' has no attribute {name!r}")
    from . import apps

    return getattr(apps, name)
