"""Model files: a deterministic on-disk format, content hashing and the registry.

A model file (``.mcw``) holds the float analysis transform (used only by the
encoder) and the integer synthesis transform (used by both sides). Its identity
is the SHA-256 of its bytes; streams record the model's name and that hash, and
decoding refuses a model whose hash differs. Shipped models live in
``medcodec/weights/`` and are named ``<arch>-<sha256[:8]>.mcw``.

Layout (little-endian)::

    8 bytes   magic b"MCWEIGHT"
    4 bytes   u32 length N of the JSON header
    N bytes   JSON header (UTF-8, sorted keys): {"arch": {...}, "meta": {...},
              "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    ...       tensor data, concatenated in header order, C order
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, ModelMismatchError, ModelNotFoundError
from ..format.fixedpoint import GAIN_ONE
from .intnet import IntLayer, IntSynthesis
from .network import Architecture, Autoencoder

__all__ = [
    "CodecModel",
    "DEFAULT_MODEL",
    "WEIGHTS_DIR",
    "list_models",
    "load_model",
    "resolve_model",
    "save_model_file",
]

MAGIC = b"MCWEIGHT"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: Name of the shipped default model (architecture name; the file adds its hash).
DEFAULT_MODEL = "mc3d-s"
_DTYPES = {"<f4": np.float32, "<i4": np.int32, "<i8": np.int64}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class CodecModel:
    """A loaded model: float analysis transform and integer synthesis transform.

    Attributes:
        name: File stem, ``<arch>-<sha256[:8]>``.
        sha256: Hex SHA-256 of the model file's bytes.
        arch: The network architecture.
        synthesis: The integer-exact decoder network.
        meta: Free-form metadata recorded at export (training data, steps, ...).
    """

    name: str
    sha256: str
    arch: Architecture
    synthesis: IntSynthesis
    tensors: dict[str, np.ndarray] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    _analysis: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def analysis(self) -> torch.nn.Module:
        """The float analysis transform (built on first use: only encoders need it)."""
        if self._analysis is None:
            net = Autoencoder(self.arch).g_a
            state = {
                k[len("g_a.") :]: torch.from_numpy(v.copy()) for k, v in self.tensors.items() if k.startswith("g_a.")
            }
            net.load_state_dict(state)
            net.eval()
            self._analysis = net
        return self._analysis

    def latents(self, normalized: np.ndarray, gain_num: int) -> np.ndarray:
        """The integer latents of a volume normalized to [-1, 1] (sides multiples of 8) at gain
        ``gain_num / GAIN_ONE``: the analysis transform, scaled, rounded and kept within the range
        where the first synthesis layer is exact (encoder only)."""
        with torch.no_grad():
            y = self.analysis(torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32))[None, None])
        y = y[0].numpy().astype(np.float64) * (gain_num / GAIN_ONE)
        bound = self.latent_bound(gain_num)
        return np.clip(np.round(y), -bound, bound).astype(np.int64)

    def latent_bound(self, gain_num: int) -> int:
        """The largest |latent| the synthesis decodes exactly at this gain (a decoder refuses more)."""
        return int(self.synthesis.first_layer_params(gain_num)[2])

    def synthesize(self, latents: np.ndarray, gain_num: int, shape: tuple[int, ...]) -> np.ndarray:
        """The integer-exact synthesis of ``latents``, cropped to the volume's ``shape``."""
        return self.synthesis(latents, gain_num)[: shape[0], : shape[1], : shape[2]]


def save_model_file(arch: Architecture, tensors: dict[str, np.ndarray], meta: dict[str, Any], out_dir: Path) -> Path:
    """Write a model file named by its content hash; returns its path.

    The bytes depend only on the arguments, so the same weights give the same file.
    """
    entries, blobs, offset = [], [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        code = {np.dtype(np.float32): "<f4", np.dtype(np.int32): "<i4", np.dtype(np.int64): "<i8"}[arr.dtype]
        blob = arr.astype(code).tobytes()
        entries.append({"name": name, "dtype": code, "shape": list(arr.shape), "offset": offset, "nbytes": len(blob)})
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps(
        {"arch": arch.to_dict(), "meta": meta, "tensors": entries}, sort_keys=True, separators=(",", ":")
    )
    head = header.encode()
    data = MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)
    digest = hashlib.sha256(data).hexdigest()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{arch.name}-{digest[:8]}.mcw"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".mcw")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _parse(data: bytes, where: str) -> tuple[Architecture, dict[str, np.ndarray], dict]:
    try:
        if data[:8] != MAGIC:
            raise ValueError("not a medcodec model file (bad magic)")
        (n,) = struct.unpack_from("<I", data, 8)
        header = json.loads(data[12 : 12 + n])
        base = 12 + n
        tensors = {}
        for e in header["tensors"]:
            start = base + e["offset"]
            if start + e["nbytes"] > len(data):
                raise ValueError("file is truncated")
            arr = np.frombuffer(data, dtype=_DTYPES[e["dtype"]], count=int(np.prod(e["shape"])), offset=start)
            tensors[e["name"]] = arr.reshape(e["shape"])
        a = header["arch"]
        arch = Architecture(a["name"], a["latent"], tuple(a["analysis"]), tuple(a["synthesis"]))
        return arch, tensors, header.get("meta", {})
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot load model {where}: {exc}") from None
    except RecursionError:  # json recurses per nesting level: a header of [[[[...]]]] exhausts the stack
        raise ModelError(f"cannot load model {where}: its JSON header nests too deeply") from None


def _int_layers(tensors: dict[str, np.ndarray], meta: dict) -> list[IntLayer]:
    # The decoder is described by the file alone (weights and layer kinds), so a
    # model file keeps decoding whatever later versions do to the float network code.
    return [
        IntLayer(
            weight=tensors[f"int.{i}.weight"].astype(np.int32),
            bias=tensors[f"int.{i}.bias"].astype(np.int64),
            mult=tensors[f"int.{i}.mult"].astype(np.int64),
            shuffle=bool(kind["shuffle"]),
            relu=bool(kind["relu"]),
        )
        for i, kind in enumerate(meta["synthesis_layers"])
    ]


@lru_cache(maxsize=8)
def _load_path(path: str) -> CodecModel:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read model file {p}: {exc.strerror}") from None
    arch, tensors, meta = _parse(data, str(p))
    digest = hashlib.sha256(data).hexdigest()
    try:
        synthesis = IntSynthesis(_int_layers(tensors, meta))
    except (KeyError, TypeError) as exc:
        raise ModelError(f"model {p} lacks tensor {exc}") from None
    except ValueError as exc:
        raise ModelError(f"model {p} is not a valid integer decoder: {exc}") from None
    return CodecModel(f"{arch.name}-{digest[:8]}", digest, arch, synthesis, tensors, meta)


def list_models() -> list[str]:
    """Names (``<arch>-<sha8>``) of the models shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.mcw"))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """Path of a model given by file path, full name, architecture name, or None (default)."""
    if model is None:
        model = DEFAULT_MODEL
    p = Path(model)
    if p.suffix == ".mcw" or os.sep in str(model) or p.is_file():
        if not p.is_file():
            raise ModelNotFoundError(f"model file not found: {p}")
        return p
    name = str(model)
    exact = WEIGHTS_DIR / f"{name}.mcw"
    if exact.is_file():
        return exact
    matches = sorted(WEIGHTS_DIR.glob(f"{name}-????????.mcw"))
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(list_models()) or "none"
    if not matches:
        raise ModelNotFoundError(f"unknown model {name!r}; shipped models: {known}")
    raise ModelNotFoundError(f"model name {name!r} is ambiguous; use one of: {known}")


def load_model(model: str | os.PathLike | None = None) -> CodecModel:
    """Load a model by file path, name or architecture name (default: the shipped model)."""
    return _load_path(str(resolve_model(model).resolve()))


#: Folders searched for model files by name after the shipped ones (os.pathsep-separated).
MODEL_PATH_ENV = "MEDCODEC_MODEL_PATH"


def model_dirs(extra: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Where streams find their models by name: the shipped weights, then ``extra``, then
    the folders of :data:`MODEL_PATH_ENV`."""
    env = [p for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep) if p]
    return [WEIGHTS_DIR, *(Path(p) for p in extra), *(Path(p) for p in env)]


def model_for_stream(
    name: str, sha256: str, model: str | os.PathLike | None, dirs: Sequence[str | os.PathLike] = ()
) -> CodecModel:
    """The model a stream names, checked against its SHA-256.

    Args:
        name: Model name recorded in the stream.
        sha256: Hex SHA-256 recorded in the stream.
        model: A model the caller supplies (path or name); None searches :func:`model_dirs`
            for ``NAME.mcw`` and takes the first whose SHA-256 is the stream's.
        dirs: Extra folders to search (before those of MEDCODEC_MODEL_PATH).

    Raises:
        ModelNotFoundError: No model by that name is available.
        ModelMismatchError: The available model's hash differs from the stream's.
    """
    if model is not None:
        found = load_model(model)
    else:
        if not _NAME.fullmatch(name):
            raise ModelNotFoundError(f"stream names an invalid model {name!r}")
        searched = model_dirs(dirs)
        candidates = [d / f"{name}.mcw" for d in searched if (d / f"{name}.mcw").is_file()]
        if not candidates:
            where = ", ".join(str(d) for d in searched)
            raise ModelNotFoundError(
                f"stream needs model {name!r} (sha256 {sha256[:16]}...), found in none of: {where}; give the model "
                f"file (model=PATH; --model PATH on the command line) or its folder ({MODEL_PATH_ENV}, --model-dir)"
            )
        loaded = [_load_path(str(c.resolve())) for c in candidates]
        found = next((m for m in loaded if m.sha256 == sha256), loaded[0])
    if found.sha256 != sha256:
        raise ModelMismatchError(
            f"stream was encoded with model {name!r} sha256 {sha256[:16]}..., "
            f"but the model given has sha256 {found.sha256[:16]}..."
        )
    return found
