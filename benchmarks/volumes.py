"""The volumes a benchmark runs on: loading, modality and cropping.

Volumes are read with ``medcodec.files.images.read`` when medcodec imports, else directly with
SimpleITK (same (z, y, x) array and geometry), so the baselines can be measured while
medcodec itself does not import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = [
    "BenchVolume",
    "center_crop",
    "default_volume_paths",
    "load_volume",
    "manifest_modalities",
    "modality_from_name",
    "volume_name",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchVolume:
    """One volume under test.

    Attributes:
        name: File name without ``.nii.gz`` (or the synthetic name).
        modality: ``"CT"``, ``"MR"`` or ``"other"``.
        array: Voxels (z, y, x) in their original dtype.
        spacing: Voxel size (x, y, z) in mm.
        origin: Position of the first voxel (x, y, z) in mm.
        direction: Direction cosines, row-major 3x3.
        source: Where the voxels came from (a path), plus any crop applied.
    """

    name: str
    modality: str
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    source: str = "synthetic"

    @property
    def voxels(self) -> int:
        """Number of voxels."""
        return int(self.array.size)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the voxels in their original dtype (the ratio's numerator)."""
        return int(self.array.nbytes)

    @property
    def data_range(self) -> float:
        """max - min of the original voxels, the PSNR peak."""
        return float(self.array.max()) - float(self.array.min())


def volume_name(path: str | os.PathLike) -> str:
    """Name of a volume file without its image suffixes (``.nii.gz``, ``.nrrd``, ...)."""
    name = Path(path).name
    for suffix in (".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        name = name.removesuffix(suffix)
    return name


def modality_from_name(name: str) -> str:
    """Modality from the project's file naming convention (``ct_...``, ``mr_...``)."""
    lower = name.lower()
    if lower.startswith("ct_"):
        return "CT"
    if lower.startswith("mr_"):
        return "MR"
    return "other"


def _find_data_dir() -> Path | None:
    try:
        from medcodec.training.datasets import find_data_dir
    except Exception:  # medcodec may not import while it is being written
        candidates = [Path(os.environ["MEDCODEC_DATA"])] if os.environ.get("MEDCODEC_DATA") else []
        candidates += [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
        return next((c.resolve() for c in candidates if (c / "manifest.json").is_file()), None)
    return find_data_dir()


def default_volume_paths(split: str = "test") -> list[tuple[Path, str]]:
    """Paths and modalities of the manifest's volumes in ``split``, in manifest order.

    Raises:
        FileNotFoundError: No data folder was found (set ``MEDCODEC_DATA``).
    """
    data_dir = _find_data_dir()
    if data_dir is None:
        raise FileNotFoundError("no data folder: set MEDCODEC_DATA or provide ../shared/data")
    rows = json.loads((data_dir / "manifest.json").read_text())
    return [
        (data_dir / r["file"], r.get("modality") or modality_from_name(r["file"])) for r in rows if r["split"] == split
    ]


def manifest_modalities() -> dict[str, str]:
    """Volume name -> modality for every manifest entry (empty when there is no data folder)."""
    data_dir = _find_data_dir()
    if data_dir is None:
        return {}
    rows = json.loads((data_dir / "manifest.json").read_text())
    return {volume_name(r["file"]): r.get("modality", "other") for r in rows}


def load_volume(path: str | os.PathLike, modality: str | None = None) -> BenchVolume:
    """Read one volume file (or DICOM folder) into a :class:`BenchVolume`.

    Args:
        path: Any file ``medcodec.files.images.read`` (or SimpleITK) reads.
        modality: Overrides the modality; by default the manifest's, else the file-name prefix.
    """
    path = Path(path)
    name = volume_name(path)
    if modality is None:
        modality = manifest_modalities().get(name) or modality_from_name(name)
    try:
        from medcodec.files.images import read
    except Exception:
        read = None
    if read is not None:
        vol = read(path)
        array, spacing, origin, direction = vol.array, vol.spacing, vol.origin, vol.direction
    else:
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if array.ndim == 2:
        array = array[np.newaxis]
    return BenchVolume(
        name, modality, np.ascontiguousarray(array), tuple(spacing), tuple(origin), tuple(direction), str(path)
    )


def center_crop(vol: BenchVolume, shape: tuple[int, int, int]) -> BenchVolume:
    """The central ``shape`` block of ``vol`` (each axis clipped to the volume's size).

    Used by ``--quick``: results on crops are smoke-test numbers, not comparable to full runs.
    The crop is ``medcodec.volume.center_crop``'s.
    """
    from medcodec.volume import center_crop as center_crop_array

    array = center_crop_array(vol.array, shape)
    if array.shape == vol.array.shape:
        return vol
    return replace(vol, array=array, source=f"{vol.source} [center crop {'x'.join(map(str, array.shape))}]")
