"""Compress a real MR volume three ways and measure what each costs and keeps.

Usage::

    python examples/quickstart.py              # nibabel's sample EPI MR (pip install nibabel)
    python examples/quickstart.py scan.nii.gz  # any volume file or DICOM series folder

For each mode (lossy at the default quality, near-lossless with ``max_error=2``,
lossless) it prints the compression ratio, the PSNR over the original's
intensity range (inf when bit-exact), the largest voxel error, and the encode
and decode times.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import medcodec

#: A real 4D EPI MR series (int16, 128 x 96 x 24 x 2) that nibabel ships for its own tests.
NIBABEL_SAMPLE = ("nibabel", "tests/data/example4d.nii.gz")


def sample_path() -> Path:
    """Locate nibabel's example4d.nii.gz.

    Returns:
        The path of the file inside the installed nibabel package.

    Raises:
        SystemExit: nibabel is not installed.
    """
    from importlib.resources import files

    try:
        return Path(str(files(NIBABEL_SAMPLE[0]).joinpath(NIBABEL_SAMPLE[1])))
    except ModuleNotFoundError:
        raise SystemExit("the default sample comes with nibabel: pip install nibabel (or give a volume path)") from None


def load_volume(path: Path) -> medcodec.Volume:
    """Read a 3D volume; of a 4D series (fMRI, DWI), keep the first 3D volume.

    Args:
        path: A volume file or DICOM series folder.

    Returns:
        The volume with its spacing, origin and direction.
    """
    try:
        return medcodec.read(path)
    except medcodec.VolumeIOError:
        image = sitk.ReadImage(str(path))
        if image.GetDimension() != 4:
            raise
    # medcodec encodes 3D volumes: cut out time point 0. Extract drops the 4th axis from
    # spacing, origin and direction as well, so the geometry stays consistent.
    size = list(image.GetSize())
    first = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    return medcodec.Volume(sitk.GetArrayFromImage(first), first.GetSpacing(), first.GetOrigin(), first.GetDirection())


def measure(volume: medcodec.Volume, **options: float) -> dict[str, float]:
    """Compress and decompress once, and compare the result with the original.

    Args:
        volume: The original.
        **options: Passed to :func:`medcodec.compress` (``quality`` or ``max_error``).

    Returns:
        Ratio, PSNR in dB, max abs error, and encode/decode seconds.
    """
    start = time.perf_counter()
    data = medcodec.compress(volume, **options)
    encoded = time.perf_counter()
    restored = medcodec.decompress(data)
    decoded = time.perf_counter()

    original = volume.array.astype(np.float64)
    error = restored.array.astype(np.float64) - original
    mse = float(np.mean(error**2))
    peak = float(original.max() - original.min()) or 1.0  # a constant volume: avoid log(0)
    return {
        "ratio": volume.array.nbytes / len(data),
        "psnr": math.inf if mse == 0 else 10 * math.log10(peak**2 / mse),
        "max_error": float(np.abs(error).max()),
        "encode_s": encoded - start,
        "decode_s": decoded - encoded,
    }


def main() -> None:
    """Run the three modes on the sample or on the volume given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, help="volume file or DICOM folder (default: nibabel sample)")
    path = parser.parse_args().path or sample_path()

    volume = load_volume(path)
    a = volume.array
    size = f"{a.nbytes / 1e6:.1f} MB" if a.nbytes >= 1e6 else f"{a.nbytes / 1e3:.1f} kB"
    print(
        f"{path.name}: {' x '.join(map(str, a.shape))} (z, y, x) {a.dtype}, "
        f"spacing {' x '.join(f'{s:g}' for s in volume.spacing)} mm, "
        f"range {a.min()}..{a.max()}, {size} raw"
    )
    print()
    print(f"{'mode':<29}{'ratio':>9}{'PSNR dB':>9}{'max err':>9}{'encode s':>10}{'decode s':>10}")
    modes = [
        (f"lossy (quality {medcodec.DEFAULT_QUALITY})", {}),
        ("near-lossless (max_error=2)", {"max_error": 2}),
        ("lossless (max_error=0)", {"max_error": 0}),
    ]
    for name, options in modes:
        r = measure(volume, **options)
        ratio = f"{r['ratio']:.2f}:1"
        print(f"{name:<29}{ratio:>9}{r['psnr']:>9.2f}{r['max_error']:>9g}{r['encode_s']:>10.2f}{r['decode_s']:>10.2f}")


if __name__ == "__main__":
    main()
