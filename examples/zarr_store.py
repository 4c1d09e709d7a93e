"""Store a CT in zarr with medcodec chunks, lossless and within max_error=2, and read a region back.

Usage::

    python examples/zarr_store.py [VOLUME] [--out DIR]   # default: the test split's abdomen CT

Needs ``pip install -e '.[zarr]'``. Writes ``DIR/lossless.zarr`` and ``DIR/max_error_2.zarr``
(zarr v3, chunks of 32 x 256 x 256 voxels, the volume's geometry in the array attributes),
then reads a 16 x 128 x 128 region of each (only the chunks it touches are decoded) and a
whole-volume statistic through dask, and prints the stores' sizes against the raw voxels.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import zarr

import medcodec
from medcodec.files.zarr_codec import MedcodecZarr
from medcodec.training.datasets import find_data_dir


def default_volume() -> Path:
    data = find_data_dir()
    if data is None:
        raise SystemExit("give a volume path (the project's ../shared/data is not here)")
    return data / "ct_abdomen_philips_bigbore_pancreasctcbct_pyvista.nii.gz"


def store_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("volume", nargs="?", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    vol = medcodec.read(args.volume or default_volume())
    out = args.out or Path(tempfile.mkdtemp(prefix="medcodec-zarr-"))
    region = (slice(8, 24), slice(128, 256), slice(128, 256))
    print(f"volume {vol.shape} {vol.dtype}, {vol.array.nbytes / 1e6:.1f} MB raw; stores in {out}")
    for name, options in (("lossless", {"max_error": 0}), ("max_error_2", {"max_error": 2})):
        path = out / f"{name}.zarr"
        z = zarr.create_array(
            zarr.storage.LocalStore(path),
            shape=vol.shape,
            chunks=(32, 256, 256),
            dtype=vol.dtype,
            serializer=MedcodecZarr(**options),
            compressors=None,
            overwrite=True,
            attributes={"spacing": list(vol.spacing), "origin": list(vol.origin), "direction": list(vol.direction)},
        )
        z[:] = vol.array
        back = zarr.open_array(zarr.storage.LocalStore(path), mode="r")
        part = back[region]
        err = int(np.abs(part.astype(np.int64) - vol.array[region]).max())
        import dask.array as da

        mean = float(da.from_zarr(back).mean().compute())
        print(
            f"{name:12s} {store_size(path) / 1e6:7.2f} MB ({vol.array.nbytes / store_size(path):.2f}:1), "
            f"region {part.shape} max error {err}, volume mean {mean:.3f} (original {vol.array.mean():.3f})"
        )


if __name__ == "__main__":
    main()
