"""Table priors: trained frequency tables the transform coder may take instead of sending its own.

Each table group of a transform section (:func:`medcodec.coding.transform.group_keys`) sends
22 rows of token counts and 9 rows of sign counts. Where a row's counts cost more to send than
they save over a trained distribution, the encoder marks the row ``0xFFFF`` and both sides use
the prior's row for that group key instead. A prior is trained from the tables of streams coded
without one (:class:`TableCounts`): its statistics add up, so sites of a federation train one
by summing their counts, and no voxel leaves a site.

A prior file (``.mct``) is identified by the SHA-256 of its bytes; a stream that uses one records
its name and hash in the header's model fields, and decoding refuses a prior whose hash
differs. Shipped priors live in ``medcodec/weights/`` as ``tables-<sha256[:8]>.mct``.

Layout (little-endian)::

    8 bytes   magic b"MCTABLES"
    4 bytes   u32 length N of the JSON header
    N bytes   JSON header (UTF-8, sorted keys): {"keys": [...], "meta": {...},
              "buckets": 22, "tokens": 124, "sign_contexts": 9}
    ...       per key, in header order: u16 token counts (buckets x tokens, C order), then
              u16 sign counts (sign_contexts x 2); every count 1 ... COUNT_TOTAL
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

from ..errors import ModelError, ModelMismatchError, ModelNotFoundError
from . import coefficients as cf
from .symbols import COUNT_TOTAL

__all__ = [
    "DEFAULT_PRIOR",
    "NO_PRIOR",
    "PRIOR_ROW",
    "TableCounts",
    "TablePrior",
    "list_priors",
    "load_prior",
    "prior_for_stream",
    "save_prior",
]

MAGIC = b"MCTABLES"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: Name of the shipped default prior (the file adds its hash).
DEFAULT_PRIOR = "tables"
#: What ``tables=`` takes for coding without a prior (every row sent, as format 4.0 does).
NO_PRIOR = "none"
#: A row that starts with this value is the prior's row (valid counts never exceed COUNT_TOTAL).
PRIOR_ROW = 0xFFFF
#: Smoothing of a trained row: this much probability mass is spread over all tokens, so a row
#: whose statistics differ from the training data's still codes every token at bounded cost.
SMOOTHING = 0.02
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHAPES = ((cf.N_BUCKETS, cf.MAX_TOKENS), (cf.N_SIGN_CONTEXTS, 2))


@dataclass(frozen=True)
class TablePrior:
    """A loaded prior: per group key, token counts (buckets x tokens) and sign counts.

    Attributes:
        name: File stem, ``tables-<sha256[:8]>``.
        sha256: Hex SHA-256 of the file's bytes.
        tokens, signs: The rows, each count in 1 ... COUNT_TOTAL.
        meta: Free-form metadata recorded at training (data, qualities, sites).
    """

    name: str
    sha256: str
    tokens: dict[str, np.ndarray] = field(repr=False)
    signs: dict[str, np.ndarray] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)


class TableCounts:
    """Sufficient statistics of a prior: the summed rows of many transform sections' tables.

    Rows are added as the streams send them (exact counts, or scaled to COUNT_TOTAL for large
    bands), so every tile weighs about the same. Counts of two sets of volumes add up
    (:meth:`merge`): a federation sums its sites' counts and gets the prior of the pooled data.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, np.ndarray] = {}
        self.signs: dict[str, np.ndarray] = {}

    def add(self, key: str, tokens: np.ndarray, signs: np.ndarray) -> None:
        """Add one group's rows (tokens: buckets x width, width <= MAX_TOKENS)."""
        t = self.tokens.setdefault(key, np.zeros(_SHAPES[0], np.int64))
        t[:, : tokens.shape[1]] += tokens
        s = self.signs.setdefault(key, np.zeros(_SHAPES[1], np.int64))
        s += signs

    def merge(self, other: TableCounts) -> None:
        for k in other.tokens:
            self.add(k, other.tokens[k], other.signs[k])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The counts as named int64 arrays (what a federation's site sends)."""
        out = {}
        for k in sorted(self.tokens):
            out[f"{k}/tokens"] = self.tokens[k].copy()
            out[f"{k}/signs"] = self.signs[k].copy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TableCounts:
        c = cls()
        for name in sorted(arrays):
            key, kind = name.rsplit("/", 1)
            if kind == "tokens":
                c.add(key, np.asarray(arrays[name], np.int64), np.asarray(arrays[f"{key}/signs"], np.int64))
        return c

    def total(self) -> int:
        return int(sum(int(t.sum()) for t in self.tokens.values()))

    def rows(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The prior's integer rows: smoothed, scaled to about COUNT_TOTAL, every count >= 1."""
        return (
            {k: _scaled(v) for k, v in sorted(self.tokens.items())},
            {k: _scaled(v) for k, v in sorted(self.signs.items())},
        )


def _scaled(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=1, keepdims=True).astype(np.float64)
    p = np.where(total > 0, counts / np.maximum(total, 1), 1.0 / counts.shape[1])
    p = (1 - SMOOTHING) * p + SMOOTHING / counts.shape[1]
    return np.clip(np.round(p * COUNT_TOTAL), 1, COUNT_TOTAL).astype(np.int64)


def save_prior(counts: TableCounts, meta: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write the prior of ``counts`` named by its content hash; returns its path.

    The bytes depend only on the arguments, so the same counts give the same file.
    """
    tokens, signs = counts.rows()
    keys = sorted(tokens)
    header = {"keys": keys, "meta": meta, "buckets": _SHAPES[0][0], "tokens": _SHAPES[0][1]}
    header["sign_contexts"] = _SHAPES[1][0]
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = b"".join(tokens[k].astype("<u2").tobytes() + signs[k].astype("<u2").tobytes() for k in keys)
    data = MAGIC + struct.pack("<I", len(head)) + head + body
    digest = hashlib.sha256(data).hexdigest()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{DEFAULT_PRIOR}-{digest[:8]}.mct"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".mct")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _parse(data: bytes, where: str) -> tuple[dict, dict, dict]:
    try:
        if data[:8] != MAGIC:
            raise ValueError("not a medcodec table prior (bad magic)")
        (n,) = struct.unpack_from("<I", data, 8)
        header = json.loads(data[12 : 12 + n])
        if (header["buckets"], header["tokens"], header["sign_contexts"]) != (*_SHAPES[0], _SHAPES[1][0]):
            raise ValueError("its table shapes are not this coder's")
        keys = header["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("its keys are not a list of names")
        per_key = 2 * (_SHAPES[0][0] * _SHAPES[0][1] + _SHAPES[1][0] * _SHAPES[1][1])
        if len(data) != 12 + n + per_key * len(keys):
            raise ValueError("its size does not match its header")
        counts = np.frombuffer(data, dtype="<u2", offset=12 + n).astype(np.int64).reshape(len(keys), -1)
        if counts.size and (counts.min() < 1 or counts.max() > COUNT_TOTAL):
            raise ValueError(f"a count is outside 1 ... {COUNT_TOTAL}")
        split = _SHAPES[0][0] * _SHAPES[0][1]
        tokens = {k: counts[i, :split].reshape(_SHAPES[0]) for i, k in enumerate(keys)}
        signs = {k: counts[i, split:].reshape(_SHAPES[1]) for i, k in enumerate(keys)}
        return tokens, signs, header.get("meta", {})
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot load table prior {where}: {exc}") from None
    except RecursionError:
        raise ModelError(f"cannot load table prior {where}: its JSON header nests too deeply") from None


@lru_cache(maxsize=8)
def _load_path(path: str) -> TablePrior:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read table prior {p}: {exc.strerror}") from None
    tokens, signs, meta = _parse(data, str(p))
    digest = hashlib.sha256(data).hexdigest()
    return TablePrior(f"{DEFAULT_PRIOR}-{digest[:8]}", digest, tokens, signs, meta)


def list_priors() -> list[str]:
    """Names (``tables-<sha8>``) of the priors shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.mct"))


def _resolve(prior: str | os.PathLike) -> Path:
    p = Path(prior)
    if p.suffix == ".mct" or os.sep in str(prior) or p.is_file():
        if not p.is_file():
            raise ModelNotFoundError(f"table prior file not found: {p}")
        return p
    name = str(prior)
    exact = WEIGHTS_DIR / f"{name}.mct"
    if exact.is_file():
        return exact
    matches = sorted(WEIGHTS_DIR.glob(f"{name}-????????.mct"))
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(list_priors()) or "none"
    if not matches:
        raise ModelNotFoundError(f"unknown table prior {name!r}; shipped priors: {known}")
    raise ModelNotFoundError(f"table prior name {name!r} is ambiguous; use one of: {known}")


def load_prior(prior: str | os.PathLike | None = None) -> TablePrior | None:
    """Load a prior by file path or name (None: the shipped one; :data:`NO_PRIOR`: none)."""
    if prior is not None and str(prior) == NO_PRIOR:
        return None
    return _load_path(str(_resolve(DEFAULT_PRIOR if prior is None else prior).resolve()))


def prior_for_stream(
    name: str, sha256: str, prior: str | os.PathLike | None, dirs: Sequence[str | os.PathLike] = ()
) -> TablePrior:
    """The prior a stream names, checked against its SHA-256.

    Args:
        name, sha256: What the stream's header records.
        prior: A prior the caller supplies (path or name); None searches the shipped priors,
            then ``dirs``, then the folders of ``MEDCODEC_MODEL_PATH``.
        dirs: Extra folders to search.

    Raises:
        ModelNotFoundError: No prior by that name is available.
        ModelMismatchError: The available prior's hash differs from the stream's.
    """
    if prior is not None and str(prior) != NO_PRIOR:
        found = load_prior(prior)
    else:
        if not _NAME.fullmatch(name):
            raise ModelNotFoundError(f"stream names an invalid table prior {name!r}")
        env = [p for p in os.environ.get("MEDCODEC_MODEL_PATH", "").split(os.pathsep) if p]
        searched = [WEIGHTS_DIR, *(Path(d) for d in dirs), *(Path(d) for d in env)]
        candidates = [d / f"{name}.mct" for d in searched if (d / f"{name}.mct").is_file()]
        if not candidates:
            where = ", ".join(str(d) for d in searched)
            raise ModelNotFoundError(
                f"stream needs table prior {name!r} (sha256 {sha256[:16]}...), found in none of: {where}; give "
                "the file (tables=PATH; --tables PATH on the command line) or its folder (MEDCODEC_MODEL_PATH, "
                "--model-dir)"
            )
        loaded = [_load_path(str(c.resolve())) for c in candidates]
        found = next((m for m in loaded if m.sha256 == sha256), loaded[0])
    assert found is not None
    if found.sha256 != sha256:
        raise ModelMismatchError(
            f"stream was encoded with table prior {name!r} sha256 {sha256[:16]}..., "
            f"but the prior given has sha256 {found.sha256[:16]}..."
        )
    return found
