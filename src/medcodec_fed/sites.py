"""Sites (hospitals): which volumes each one trains on and which it holds back.

A :class:`Site` only names files; :func:`load_site` reads them, at the site, into
the normalized arrays local training and evaluation use. Sites come from
folders, from the data manifest grouped by its ``site`` column (or by
modality), or from one collection split into non-IID parts by a Dirichlet draw
over its sources.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcodec.files.images import VOLUME_SUFFIXES

__all__ = [
    "Site",
    "SiteData",
    "dirichlet_partition",
    "held_out_volumes",
    "list_volumes",
    "load_site",
    "sites_from_manifest",
    "split_collection",
]

#: Fraction of the slices held back when a site has a single volume.
SINGLE_VOLUME_HOLDOUT = 0.25


@dataclass(frozen=True)
class Site:
    """One data holder of a federation.

    Attributes:
        name: Site name (letters, digits, ``.``, ``_``, ``-``).
        train: Volumes the site trains on.
        held_out: Volumes the site evaluates on and never trains on.
        holdout_fraction: When ``held_out`` is empty: fraction of the last slices of
            each training volume kept back for evaluation (a site with one volume).
    """

    name: str
    train: tuple[Path, ...]
    held_out: tuple[Path, ...] = ()
    holdout_fraction: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(Path(p) for p in self.train))
        object.__setattr__(self, "held_out", tuple(Path(p) for p in self.held_out))
        if not self.train:
            raise ValueError(f"site {self.name!r} has no training volumes")
        if not self.held_out and not 0 < self.holdout_fraction < 1:
            raise ValueError(f"site {self.name!r} needs held-out volumes or a holdout_fraction in (0, 1)")

    @classmethod
    def from_paths(cls, name: str, paths: Sequence[str | os.PathLike], *, hold_out: int = 1) -> Site:
        """A site from a list of volumes; the last ``hold_out`` (by name) are held back.

        A site with fewer volumes than ``hold_out + 1`` holds back the last
        :data:`SINGLE_VOLUME_HOLDOUT` of each volume's slices instead.
        """
        paths = sorted(Path(p) for p in paths)
        if not paths:
            raise ValueError(f"site {name!r}: no volumes")
        if hold_out >= 1 and len(paths) > hold_out:
            return cls(name, tuple(paths[:-hold_out]), tuple(paths[-hold_out:]))
        return cls(name, tuple(paths), (), SINGLE_VOLUME_HOLDOUT)

    @classmethod
    def from_folder(cls, name: str, folder: str | os.PathLike, *, hold_out: int = 1) -> Site:
        """A site from the volumes in ``folder`` (see :func:`list_volumes`)."""
        return cls.from_paths(name, list_volumes(folder), hold_out=hold_out)

    def describe(self) -> dict:
        """JSON-able description (recorded in checkpoints to check a resumed run's sites)."""
        return {
            "name": self.name,
            "train": [str(p) for p in self.train],
            "held_out": [str(p) for p in self.held_out],
            "holdout_fraction": self.holdout_fraction,
        }


def list_volumes(folder: str | os.PathLike) -> list[Path]:
    """Volume files and DICOM series sub-folders directly inside ``folder``, sorted by name.

    Raises:
        FileNotFoundError: ``folder`` is not a folder or holds no volume.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"site folder not found: {folder}")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith("."):
            found.append(p)
        elif p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
            found.append(p)
    if not found:
        raise FileNotFoundError(f"no volumes ({', '.join(VOLUME_SUFFIXES)} or DICOM folders) in {folder}")
    return found


def sites_from_manifest(
    data_dir: str | os.PathLike | None = None, *, split: str = "train", group_by: str = "site", hold_out: int = 1
) -> list[Site]:
    """One site per value of ``group_by`` ("site" or "modality") among the ``split`` volumes.

    Each site holds back its last ``hold_out`` volumes for evaluation, so the
    manifest's test split stays untouched for the final report.
    """
    from medcodec.training.datasets import load_manifest

    if group_by not in ("site", "modality"):
        raise ValueError(f"group_by must be 'site' or 'modality', got {group_by!r}")
    entries = load_manifest(Path(data_dir) if data_dir else None, split=split)
    groups: dict[str, list[Path]] = {}
    for e in entries:
        groups.setdefault(getattr(e, group_by), []).append(e.path)
    return [Site.from_paths(name, paths, hold_out=hold_out) for name, paths in sorted(groups.items())]


def dirichlet_partition(labels: Sequence[str], num_sites: int, alpha: float, seed: int) -> list[list[int]]:
    """Split items into ``num_sites`` non-IID parts by a Dirichlet draw per label.

    For every label (a source or modality), the share of its items each site gets is
    drawn from Dirichlet(alpha, ..., alpha) (Hsu et al., 2019): small ``alpha`` gives
    each site few sources, large ``alpha`` approaches an IID split. Empty sites then
    take an item from the largest site, so every site has data.

    Returns:
        Item indices of each site, sorted.

    Raises:
        ValueError: Fewer items than sites, or ``alpha`` <= 0.
    """
    from .randomness import Purpose, derive_seed

    if num_sites < 1 or len(labels) < num_sites:
        raise ValueError(f"cannot split {len(labels)} items into {num_sites} non-empty sites")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    rng = np.random.default_rng(derive_seed(seed, 0, 0, Purpose.PARTITION))
    parts: list[list[int]] = [[] for _ in range(num_sites)]
    for label in sorted(set(labels)):
        items = [i for i, lab in enumerate(labels) if lab == label]
        items = [items[j] for j in rng.permutation(len(items))]
        shares = rng.dirichlet(np.full(num_sites, float(alpha)))
        cuts = np.round(np.cumsum(shares)[:-1] * len(items)).astype(int)
        for site, chunk in enumerate(np.split(np.array(items, dtype=int), cuts)):
            parts[site].extend(int(i) for i in chunk)
    for site in range(num_sites):
        if not parts[site]:
            donor = max(range(num_sites), key=lambda s: (len(parts[s]), -s))
            parts[site].append(parts[donor].pop(0))
    return [sorted(p) for p in parts]


def split_collection(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    num_sites: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    prefix: str = "site",
    hold_out: int = 1,
) -> list[Site]:
    """Sites ``{prefix}-0 ...`` from one collection, split by :func:`dirichlet_partition`."""
    if len(paths) != len(labels):
        raise ValueError("paths and labels differ in length")
    parts = dirichlet_partition(labels, num_sites, alpha, seed)
    return [
        Site.from_paths(f"{prefix}-{i}", [paths[j] for j in part], hold_out=hold_out) for i, part in enumerate(parts)
    ]


@dataclass
class SiteData:
    """A site's volumes in memory, normalized to [-1, 1]; never leaves the site.

    Attributes:
        name: Site name.
        train: Normalized training volumes.
        eval_crops: Centred crops of the normalized held-back volumes (per-round evaluation).
    """

    name: str
    train: list[np.ndarray] = field(repr=False)
    eval_crops: list[np.ndarray] = field(repr=False)

    @property
    def train_voxels(self) -> int:
        return int(sum(v.size for v in self.train))


def _split_z(array: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    keep = max(1, array.shape[0] - max(1, int(round(array.shape[0] * fraction))))
    return array[:keep], array[keep:]


def held_out_volumes(site: Site) -> list:
    """The site's held-back volumes as ``medcodec.Volume`` objects (original dtype and geometry)."""
    from medcodec.files.images import read
    from medcodec.volume import Volume

    if site.held_out:
        return [read(p) for p in site.held_out]
    out = []
    for p in site.train:
        vol = read(p)
        _, back = _split_z(vol.array, site.holdout_fraction)
        out.append(Volume(np.ascontiguousarray(back), vol.spacing, vol.origin, vol.direction))
    return out


def load_site(site: Site, *, eval_crop: int) -> SiteData:
    """Read and normalize a site's volumes (with ``medcodec.training.train.normalize_volume``).

    Raises:
        medcodec.VolumeIOError: A volume cannot be read (the message names the site and file).
    """
    from medcodec.errors import VolumeIOError

    try:
        return _load_site(site, eval_crop)
    except VolumeIOError as exc:
        raise type(exc)(f"site {site.name!r}: {exc}") from None


def _load_site(site: Site, eval_crop: int) -> SiteData:
    from medcodec.files.images import read
    from medcodec.training.train import normalize_volume

    from .evaluate import center_crop

    train, crops = [], []
    if site.held_out:
        train = [normalize_volume(read(p).array) for p in site.train]
        crops = [center_crop(normalize_volume(v.array), eval_crop) for v in held_out_volumes(site)]
    else:
        for p in site.train:
            front, back = _split_z(read(p).array, site.holdout_fraction)
            train.append(normalize_volume(front))
            crops.append(center_crop(normalize_volume(back), eval_crop))
    return SiteData(site.name, train, crops)
