#!/usr/bin/env bash
# The quickstart with the command-line tool: compress one volume three ways, inspect, decompress.
#
# Usage:
#   examples/quickstart_cli.sh               # nibabel's sample EPI MR (pip install nibabel)
#   examples/quickstart_cli.sh scan.nii.gz   # any volume file or DICOM series folder
#
# Uses the installed `medcodec` command, or `python -m medcodec` from this checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
if command -v medcodec >/dev/null 2>&1; then
    medcodec=(medcodec)
else
    export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
    medcodec=("$python" -m medcodec)
fi

if [[ $# -ge 1 ]]; then
    input="$(realpath "$1")"
fi
# Work in a scratch folder so the commands below read as a user would type them.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

if [[ $# -eq 0 ]]; then
    # nibabel's example4d.nii.gz is a 4D series; medcodec encodes 3D, so save time point 0.
    input="example.nii.gz"
    "$python" - "$input" <<'EOF'
import sys
from importlib.resources import files

import SimpleITK as sitk

image = sitk.ReadImage(str(files("nibabel").joinpath("tests/data/example4d.nii.gz")))
size = list(image.GetSize())
sitk.WriteImage(sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0]), sys.argv[1])
EOF
fi

run() { echo "\$ medcodec $*"; "${medcodec[@]}" "$@"; echo; }

run --version
run compress "$input" -o lossy.mcz                   # lossy, default quality
run compress "$input" -o near.mcz --max-error 2     # every voxel within +-2
run compress "$input" -o lossless.mcz --lossless    # bit-exact
run info near.mcz
for mode in lossy near lossless; do
    run decompress "$mode.mcz" -o "$mode.nii.gz" -q
done

# Check what each mode kept, voxel by voxel.
"$python" - "$input" <<'EOF'
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import medcodec

source = Path(sys.argv[1])
try:
    original = medcodec.read(source).array.astype(np.float64)
except medcodec.VolumeIOError:  # a 4D series given on the command line: time point 0
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))[0].astype(np.float64)
peak = float(original.max() - original.min()) or 1.0
print(f"{'mode':<10}{'size':>12}{'PSNR dB':>9}{'max err':>9}")
for mode in ("lossy", "near", "lossless"):
    error = medcodec.read(f"{mode}.nii.gz").array - original
    mse = float(np.mean(error**2))
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    size = Path(f"{mode}.mcz").stat().st_size
    print(f"{mode:<10}{size:>10} B{psnr:>9.2f}{np.abs(error).max():>9g}")
EOF
