"""The only things that cross a site boundary: typed, validated messages.

A site receives a :class:`GlobalModel` and sends back a :class:`SiteUpdate`
(trained parameters, a sample count, a few named scalars), a
:class:`SiteEvaluation` (named scalars) and, for the model export, a
:class:`SiteCalibration` (one activation range per hidden synthesis layer).
Each message checks itself on
construction: every array must be a parameter the architecture declares, under
its own name, with its own shape and dtype, and every scalar must carry a name
from :data:`METRIC_NAMES`. There is no free-form field, so a voxel array (or a
list of numbers disguised as metrics) cannot be put into a message at all.

This bounds what leaves a site to parameter-shaped tensors and a handful of
scalars. It is not a privacy guarantee against attacks that infer data from the
parameters themselves; that is the job of secure aggregation and differential
privacy in the Flower engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "MessageError",
    "GlobalModel",
    "SiteUpdate",
    "SiteEvaluation",
    "SiteCalibration",
    "calibration_layers",
    "parameter_spec",
]

#: Names a scalar in a message may have; anything else is refused.
METRIC_NAMES: frozenset[str] = frozenset(
    {"loss", "mse", "bpv", "prox", "steps", "seconds", "psnr", "ssim", "ratio", "max_abs_error", "voxels"}
)
_MAX_METRICS = len(METRIC_NAMES)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class MessageError(ValueError):
    """A message that breaks the site-boundary rules (unknown name, wrong shape or dtype, ...)."""


@lru_cache(maxsize=16)
def _spec(arch: str) -> Mapping[str, tuple[tuple[int, ...], np.dtype]]:
    import torch

    from medcodec.model.network import ARCHITECTURES, Autoencoder

    if arch not in ARCHITECTURES:
        raise MessageError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    # Building the network only to read names and shapes; keep the global RNG untouched.
    with torch.random.fork_rng():
        state = Autoencoder(ARCHITECTURES[arch]).state_dict()
    return MappingProxyType({k: (tuple(v.shape), np.dtype(np.float32)) for k, v in state.items()})


def parameter_spec(arch: str) -> Mapping[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every parameter architecture ``arch`` declares.

    Raises:
        MessageError: ``arch`` is not a registered architecture.
    """
    return _spec(arch)


def calibration_layers(arch: str) -> int:
    """How many activation ranges a :class:`SiteCalibration` of ``arch`` carries.

    One per hidden synthesis layer: every ``g_s.N`` layer but the last (see
    ``medcodec.training.export.calibrate``).

    Raises:
        MessageError: ``arch`` is not a registered architecture.
    """
    layers = {name.split(".")[1] for name in parameter_spec(arch) if name.startswith("g_s.")}
    return len(layers) - 1


def _check_site(site: str) -> None:
    if not isinstance(site, str) or not _SITE_NAME.match(site):
        raise MessageError(f"site name must match {_SITE_NAME.pattern}, got {site!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MessageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _freeze_parameters(arch: str, parameters: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    spec = parameter_spec(arch)
    if not isinstance(parameters, Mapping):
        raise MessageError(f"parameters must be a mapping of name -> array, got {type(parameters).__name__}")
    frozen = {}
    for name, value in parameters.items():
        if name not in spec:
            raise MessageError(f"{name!r} is not a parameter of architecture {arch!r}")
        if not isinstance(value, np.ndarray):
            raise MessageError(f"parameter {name!r} must be a numpy array, got {type(value).__name__}")
        shape, dtype = spec[name]
        if value.shape != shape:
            raise MessageError(f"parameter {name!r} has shape {value.shape}, architecture {arch!r} declares {shape}")
        if value.dtype != dtype:
            raise MessageError(f"parameter {name!r} has dtype {value.dtype}, expected {dtype}")
        copy = np.array(value, dtype=dtype, copy=True, order="C")
        copy.setflags(write=False)  # a message is a value: nobody edits it in flight
        frozen[name] = copy
    return MappingProxyType(dict(sorted(frozen.items())))


def _freeze_metrics(metrics: Mapping[str, float]) -> Mapping[str, float]:
    if not isinstance(metrics, Mapping):
        raise MessageError(f"metrics must be a mapping of name -> float, got {type(metrics).__name__}")
    if len(metrics) > _MAX_METRICS:
        raise MessageError(f"at most {_MAX_METRICS} metrics may be sent, got {len(metrics)}")
    out = {}
    for name, value in metrics.items():
        if name not in METRIC_NAMES:
            raise MessageError(f"metric {name!r} is not one of {sorted(METRIC_NAMES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise MessageError(f"metric {name!r} must be a real scalar, got {type(value).__name__}")
        out[name] = float(value)
    return MappingProxyType(dict(sorted(out.items())))


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """Server -> site: the current shared parameters.

    Attributes:
        arch: Architecture name (a key of ``medcodec.model.network.ARCHITECTURES``).
        round: Round these parameters start (0 for the initial model).
        parameters: Shared parameter tensors by state-dict name (float32, read-only).
    """

    arch: str
    round: int
    parameters: Mapping[str, np.ndarray] = field(repr=False)

    def __post_init__(self) -> None:
        _check_int("round", self.round, 0)
        object.__setattr__(self, "parameters", _freeze_parameters(self.arch, self.parameters))


@dataclass(frozen=True, eq=False)
class SiteUpdate:
    """Site -> server: the result of one round of local training.

    Attributes:
        site: Sender's site name.
        arch: Architecture name; must be the global model's.
        round: Round the update answers.
        parameters: Trained shared parameters by name (float32, read-only).
        num_samples: Training patches processed (the FedAvg weight).
        metrics: Named training scalars (names from :data:`METRIC_NAMES`).
    """

    site: str
    arch: str
    round: int
    parameters: Mapping[str, np.ndarray] = field(repr=False)
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_site(self.site)
        _check_int("round", self.round, 0)
        _check_int("num_samples", self.num_samples, 0)
        object.__setattr__(self, "num_samples", int(self.num_samples))
        object.__setattr__(self, "parameters", _freeze_parameters(self.arch, self.parameters))
        object.__setattr__(self, "metrics", _freeze_metrics(self.metrics))


@dataclass(frozen=True, eq=False)
class SiteEvaluation:
    """Site -> server: metrics of the current model on the site's held-back volumes.

    Attributes:
        site: Sender's site name.
        round: Round whose model was evaluated.
        metrics: Named scalars (names from :data:`METRIC_NAMES`), e.g. bpv, psnr, ssim.
    """

    site: str
    round: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_site(self.site)
        _check_int("round", self.round, 0)
        object.__setattr__(self, "metrics", _freeze_metrics(self.metrics))


@dataclass(frozen=True, eq=False)
class SiteCalibration:
    """Site -> server: activation ranges of a model on the site's own training volumes.

    The model export needs, for every hidden synthesis layer, the range of the
    activations the float network produces (``medcodec.training.export.calibrate``). Each
    site measures it on its own patches and sends only these scalars; the server
    exports with their element-wise maximum (:func:`~medcodec_fed.model_files.combine_calibrations`).

    Attributes:
        site: Sender's site name.
        arch: Architecture of the calibrated model.
        activation_max: One positive, finite range per hidden synthesis layer
            (:func:`calibration_layers` of them), as a tuple of floats.
    """

    site: str
    arch: str
    activation_max: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_site(self.site)
        expected = calibration_layers(self.arch)
        values = self.activation_max
        if isinstance(values, (str, bytes, np.ndarray)) or not isinstance(values, (tuple, list)):
            raise MessageError(f"activation_max must be a tuple of {expected} floats, got {type(values).__name__}")
        if len(values) != expected:
            raise MessageError(f"activation_max of {self.arch!r} holds {expected} values, got {len(values)}")
        out = []
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise MessageError(f"activation_max[{i}] must be a real scalar, got {type(value).__name__}")
            if not np.isfinite(value) or value <= 0:
                raise MessageError(f"activation_max[{i}] must be finite and > 0, got {value!r}")
            out.append(float(value))
        object.__setattr__(self, "activation_max", tuple(out))
