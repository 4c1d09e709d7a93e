"""Settings of a federated run, from keyword arguments, a TOML file or the command line."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sites import SiteData

__all__ = [
    "AGGREGATIONS",
    "DRILL_KINDS",
    "LocalConfig",
    "RunConfig",
    "check_field_types",
    "load_toml",
    "RESUMABLE_KEYS",
]

AGGREGATIONS = ("fedavg", "median", "trimmed-mean")

#: The hostile updates a ``drill_hostile`` site sends (made by ``medcodec_fed.local.drill_update``):
#: every parameter NaN; every parameter 1e30; its change of the global model times 1e4;
#: its own parameters with ``num_samples`` = 2**63 - 1.
DRILL_KINDS = ("nan", "huge", "scaled", "samples")

#: Settings a resumed run may change; every other one must equal the checkpoint's,
#: because it changes the training trajectory or the meaning of earlier metrics.
RESUMABLE_KEYS = frozenset({"rounds", "threads", "plots", "baselines", "final_crop", "export"})


@dataclass(frozen=True)
class LocalConfig:
    """Local training settings (a subset of :class:`RunConfig`: :meth:`RunConfig.local_config`).

    Attributes:
        steps: Optimizer steps per round (used when ``epochs`` is None).
        epochs: Passes over the site's voxels per round, counted in patches.
        batch: Patches per step.
        patch: Patch side (a multiple of 8).
        lr: Adam learning rate.
        mu: FedProx proximal weight.
        clip: Gradient-norm clip, as in centralized training.
    """

    steps: int = 50
    epochs: float | None = None
    batch: int = 4
    patch: int = 32
    lr: float = 5e-4
    mu: float = 0.0
    clip: float = 1.0

    def steps_for(self, data: SiteData) -> int:
        """Steps one round takes on ``data``."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * data.train_voxels / (self.batch * self.patch**3)))


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated run.

    Attributes:
        arch: Architecture name (``medcodec.model.network.ARCHITECTURES``).
        rounds: Federated rounds.
        local_steps: Optimizer steps per site per round (ignored when ``local_epochs`` is set).
        local_epochs: Passes over a site's voxels per round, counted in patches; sites
            with more data then take more steps and weigh more in FedAvg.
        batch: Patches per step.
        patch: Patch side in voxels (a multiple of 8).
        lr: Adam learning rate (the entropy model's group uses 5x, as in ``medcodec.training.train``).
        mu: FedProx proximal weight (0: plain FedAvg local training).
        fraction: Fraction of sites sampled each round (at least one).
        dropout: Probability that a sampled site drops out of a round.
        site_dropout: Per-site dropout probabilities overriding ``dropout``.
        drill_hostile: A fault drill, never part of a real run: site name -> the kind of
            hostile update (:data:`DRILL_KINDS`) that site sends every round instead of its
            own, to rehearse the server's screening. Recorded in metrics.json
            (:meth:`drill`) and in the model file.
        aggregation: "fedavg" (weighted by sample counts), "median" or "trimmed-mean"
            (coordinate-wise, unweighted).
        trim: Fraction trimmed from each end per coordinate for "trimmed-mean".
        max_samples: The largest sample count a site's update is weighted with by
            "fedavg" (a site reporting more weighs this much). None: ``local_steps * batch``
            with ``local_steps`` (what every honest site reports), else
            ``medcodec_fed.aggregate.MAX_SAMPLES`` (2**20 patches).
        local_groups: Glob patterns of parameter names that stay at each site
            (personalization), e.g. ``("prior.*",)``.
        seed: Seed of every random choice.
        threads: torch threads; bit-identical results hold for the same thread count.
        quality: The fixed quality (1-100) of every evaluation: its latent gain
            (``medcodec.codec.quality_gain``) for the per-round float evaluation, and
            ``medcodec.compress(..., quality=)`` for the final one.
        eval_crop: Side of the centred crop of each held-back volume evaluated per round.
        final_crop: Crop side for the final codec evaluation (None: whole volumes).
        calib_patches: Calibration patches for the model export.
        calib_size: Side of the calibration patches (a multiple of 8).
        baselines: Also train centralized and local-only models with the same budget.
        init: Start from this checkpoint or state dict instead of a seeded initialization.
        plots: Draw the PNG plots at the end.
        export: Write the codec model file(s) at the end.
    """

    arch: str = "mc3d-s"
    rounds: int = 10
    local_steps: int = 50
    local_epochs: float | None = None
    batch: int = 4
    patch: int = 32
    lr: float = 5e-4
    mu: float = 0.0
    fraction: float = 1.0
    dropout: float = 0.0
    site_dropout: Mapping[str, float] = field(default_factory=dict)
    drill_hostile: Mapping[str, str] = field(default_factory=dict)
    aggregation: str = "fedavg"
    trim: float = 0.1
    max_samples: int | None = None
    local_groups: tuple[str, ...] = ()
    seed: int = 0
    threads: int = 1
    quality: int = 50
    eval_crop: int = 64
    final_crop: int | None = None
    calib_patches: int = 12
    calib_size: int = 48
    baselines: bool = False
    init: str | None = None
    plots: bool = True
    export: bool = True

    def local_config(self) -> LocalConfig:
        """The local-training part of these settings."""
        return LocalConfig(
            steps=self.local_steps, epochs=self.local_epochs, batch=self.batch, patch=self.patch, lr=self.lr, mu=self.mu
        )

    def __post_init__(self) -> None:
        from medcodec.model.network import ARCHITECTURES

        check_field_types(self)
        groups = self.local_groups
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise ValueError(f"local_groups must be a list of glob patterns, got {groups!r}")
        object.__setattr__(self, "local_groups", tuple(groups))
        if not isinstance(self.site_dropout, Mapping) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in self.site_dropout.values()
        ):
            raise ValueError(f"site_dropout must map site names to probabilities, got {self.site_dropout!r}")
        object.__setattr__(self, "site_dropout", {str(k): float(v) for k, v in dict(self.site_dropout).items()})
        drill = self.drill_hostile
        if not isinstance(drill, Mapping) or not all(isinstance(v, str) and v in DRILL_KINDS for v in drill.values()):
            raise ValueError(f"drill_hostile must map site names to one of {DRILL_KINDS}, got {self.drill_hostile!r}")
        object.__setattr__(self, "drill_hostile", {str(k): v for k, v in dict(drill).items()})
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        _require(self.rounds >= 1, "rounds must be >= 1")
        _require(self.local_steps >= 1, "local_steps must be >= 1")
        _require(self.local_epochs is None or self.local_epochs > 0, "local_epochs must be > 0")
        _require(self.batch >= 1, "batch must be >= 1")
        for name in ("patch", "eval_crop", "calib_size"):
            value = getattr(self, name)
            _require(value >= 8 and value % 8 == 0, f"{name} must be a positive multiple of 8, got {value}")
        _require(self.final_crop is None or (self.final_crop >= 8), "final_crop must be >= 8")
        _require(self.lr > 0, "lr must be > 0")
        _require(self.mu >= 0, "mu must be >= 0")
        _require(0 < self.fraction <= 1, "fraction must be in (0, 1]")
        for p in (self.dropout, *self.site_dropout.values()):
            _require(0 <= p <= 1, f"dropout probabilities must be in [0, 1], got {p}")
        _require(self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}")
        _require(0 <= self.trim < 0.5, "trim must be in [0, 0.5)")
        _require(self.max_samples is None or self.max_samples >= 1, "max_samples must be >= 1")
        _require(self.seed >= 0, "seed must be >= 0")
        _require(self.threads >= 1, "threads must be >= 1")
        _require(1 <= self.quality <= 100, "quality must be in 1..100")
        _require(1 <= self.calib_patches, "calib_patches must be >= 1")

    def sample_cap(self) -> int:
        """The sample count an update is weighted with at most (see ``max_samples``)."""
        from .aggregate import MAX_SAMPLES

        if self.max_samples is not None:
            return self.max_samples
        return self.local_steps * self.batch if self.local_epochs is None else MAX_SAMPLES

    def local_names(self, names: list[str]) -> list[str]:
        """The parameter names among ``names`` that stay local; every pattern must match one.

        Raises:
            ValueError: A pattern matches nothing, or every parameter would stay local.
        """
        for pattern in self.local_groups:
            if not fnmatch.filter(names, pattern):
                raise ValueError(f"local group {pattern!r} matches no parameter of {self.arch!r}")
        local = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.local_groups)]
        if len(local) == len(names):
            raise ValueError("local_groups keep every parameter local: nothing would be federated")
        return local

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (recorded in checkpoints and metrics.json)."""
        d = asdict(self)
        d["local_groups"] = list(self.local_groups)
        d["site_dropout"] = dict(sorted(self.site_dropout.items()))
        d["drill_hostile"] = dict(sorted(self.drill_hostile.items()))
        return d

    def drill(self) -> dict[str, Any] | None:
        """The fault drill of this run, as metrics.json and the model file record it (None: a real run)."""
        if not self.drill_hostile:
            return None
        sends = ", ".join(f"{site} sends {kind!r} updates" for site, kind in sorted(self.drill_hostile.items()))
        return {
            "hostile": dict(sorted(self.drill_hostile.items())),
            "note": f"fault drill ({sends}): a rehearsal of the defences, not a real run",
        }

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping whose keys may use dashes (TOML, CLI) or underscores.

        Raises:
            ValueError: An unknown key.
        """
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            kwargs[name] = value
        return cls(**kwargs)


# Annotation -> the values a setting of that type accepts, and how an error names them.
_SCALARS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "int": (numbers.Integral, "an integer"),
    "float": (numbers.Real, "a number"),
    "str": (str, "a string"),
    "bool": (bool, "true or false"),
}


def check_field_types(settings: Any) -> None:
    """Check that every scalar field of dataclass ``settings`` holds its annotated type.

    A TOML file or a run config can hold any type (``rounds = "abc"``); comparing such a
    value in a range check would raise TypeError instead of naming the setting. Only
    ``int``, ``float``, ``str`` and ``bool`` annotations (optionally ``| None``) are
    checked; an int is a valid float, a bool is not a number.

    Raises:
        ValueError: A field holds another type.
    """
    for f in fields(settings):
        annotation = str(f.type)
        base, _, rest = annotation.partition(" | ")
        value = getattr(settings, f.name)
        if base not in _SCALARS or rest not in ("", "None") or (rest and value is None):
            continue
        kinds, words = _SCALARS[base]
        if not isinstance(value, kinds) or (base != "bool" and isinstance(value, bool)):
            raise ValueError(f"{f.name} must be {words}{' or unset' if rest else ''}, got {value!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def load_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a run file: settings at the top level, sites in a ``[sites]`` table (name = folder).

    Relative site folders are taken relative to the TOML file. Example::

        rounds = 20
        local-steps = 50
        local-groups = ["prior.*"]
        [sites]
        hospital-a = "data/a"
        hospital-b = "/srv/b"

    Returns:
        (settings, sites): settings for :meth:`RunConfig.from_mapping` (plus the optional
        keys "out", "data", "partition", "num-sites", "alpha" the CLI understands) and
        site name -> folder.
    """
    try:
        import tomllib  # stdlib from Python 3.11
    except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
        import tomli as tomllib

    path = Path(path)
    with path.open("rb") as f:
        doc = tomllib.load(f)
    sites = doc.pop("sites", {})
    if not isinstance(sites, dict):
        raise ValueError(f"{path}: [sites] must be a table of name = folder")
    resolved = {
        str(k): str((path.parent / str(v)).resolve()) if not Path(str(v)).is_absolute() else str(v)
        for k, v in sites.items()
    }
    return doc, resolved
