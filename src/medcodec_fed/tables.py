"""Federated training of the transform coder's table prior: every site counts, the server sums.

A table prior (:mod:`medcodec.coding.priors`) is trained from sufficient statistics: the
frequency tables that a site's volumes send when coded without a prior, summed per group key.
A site therefore sends one message of integer counts (:class:`SiteCounts`), never a voxel, and
the sum of the sites' counts is exactly the count of the pooled data: one round of federated
averaging (weights = counts) gives the centralized prior. Integer sums are also what secure
aggregation computes, so the server can learn the total without any site's own counts.

Usage::

    from medcodec_fed.tables import federate_tables
    path = federate_tables(sites, "runs/fed-tables")
    medcodec.compress(volume, quality=60, tables=str(path))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from medcodec.coding.priors import TableCounts, save_prior
from medcodec.training.tables import QUALITIES, count_volumes

from .messages import MessageError
from .sites import Site

__all__ = ["SiteCounts", "aggregate_counts", "count_site", "federate_tables", "write_federated_prior"]

_KEY = re.compile(r"L[0-9]{1,2}(-[01]{3})?/(tokens|signs)")


def _shape(kind: str) -> tuple[int, int]:
    from medcodec.coding import coefficients as cf

    return (cf.N_BUCKETS, cf.MAX_TOKENS) if kind == "tokens" else (cf.N_SIGN_CONTEXTS, 2)


@dataclass(frozen=True)
class SiteCounts:
    """What a site sends: its name, how many volumes it counted, and its table counts.

    Attributes:
        site: Site name.
        volumes: Volumes counted (those of fractional floats count as none).
        counts: Non-negative int64 arrays named ``<group key>/tokens`` and ``<group key>/signs``.
    """

    site: str
    volumes: int
    counts: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        frozen = {}
        for name, a in self.counts.items():
            if not _KEY.fullmatch(name):
                raise MessageError(f"site {self.site!r} sent counts under an unknown name {name!r}")
            arr = np.asarray(a)
            if arr.shape != _shape(name.rsplit("/", 1)[1]) or arr.dtype.kind not in "iu" or (arr < 0).any():
                raise MessageError(f"site {self.site!r} sent invalid counts for {name!r}")
            arr = arr.astype(np.int64)
            arr.setflags(write=False)
            frozen[name] = arr
        keys = {n.rsplit("/", 1)[0] for n in frozen}
        if any(f"{k}/tokens" not in frozen or f"{k}/signs" not in frozen for k in keys):
            raise MessageError(f"site {self.site!r} sent token counts without sign counts or the reverse")
        if self.volumes < 0:
            raise MessageError(f"site {self.site!r} reports a negative volume count")
        object.__setattr__(self, "counts", MappingProxyType(frozen))


def count_site(site: Site, work_dir: str | os.PathLike) -> SiteCounts:
    """Run at a site: count the table statistics of its training volumes (resumable in
    ``work_dir``, which stays at the site) and return the message it sends."""
    counts = count_volumes(work_dir, site.train)
    return SiteCounts(site.name, len(site.train), counts.to_arrays())


def aggregate_counts(updates: Sequence[SiteCounts]) -> TableCounts:
    """Run at the server: the sum of the sites' counts (the pooled data's statistics).

    Raises:
        MessageError: No update, or two from the same site.
    """
    if not updates:
        raise MessageError("no site sent counts")
    names = [u.site for u in updates]
    if len(set(names)) != len(names):
        raise MessageError(f"a site sent counts twice: {sorted(names)}")
    total = TableCounts()
    for u in updates:
        total.merge(TableCounts.from_arrays(dict(u.counts)))
    return total


def write_federated_prior(updates: Sequence[SiteCounts], out: str | os.PathLike) -> Path:
    """Run at the server: sum the sites' counts and write the prior file to ``out`` (both engines
    write the same file for the same counts); returns its path.

    Raises:
        MessageError: As :func:`aggregate_counts`.
    """
    total = aggregate_counts(updates)
    meta = {"federated": True, "sites": {u.site: u.volumes for u in updates}, "qualities": list(QUALITIES)}
    return save_prior(total, meta, out)


def federate_tables(sites: Sequence[Site], out: str | os.PathLike) -> Path:
    """The in-process engine: every site counts in its own folder under ``out/sites/``, the server
    sums and writes the prior to ``out``; returns the prior file's path. Running it again reuses
    the counts already made."""
    out = Path(out)
    return write_federated_prior([count_site(s, out / "sites" / s.name) for s in sites], out)
