"""Peak memory of coding a volume larger than memory, from and to disk (medcodec.files.large).

    PYTHONPATH=src:. python -m benchmarks.large [--slices 2000] [--max-error 0]

Writes the test split's abdomen CT (134×512×512 int16) repeated along z to N slices as a
``.npy`` file (N = 2000: 1.05 GB), then in a child process each: ``compress_file`` to a
stream file and ``decompress_file`` to a ``.nii``; prints each step's peak resident memory
(``VmHWM``), its time and MB/s, and checks the decoded file against the source.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import sys, time
from medcodec.files.large import compress_file, decompress_file
step, src, stream, out, bound = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
t = time.perf_counter()
if step == "compress":
    compress_file(src, stream, max_error=bound)
else:
    decompress_file(stream, out)
dt = time.perf_counter() - t
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"{dt:.1f} {peak / 1024:.0f}")
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=2000)
    p.add_argument("--max-error", type=int, default=0)
    args = p.parse_args(argv)
    import medcodec
    from medcodec.training.datasets import load_manifest

    src_entry = next(e for e in load_manifest(split="test") if e.name.startswith("ct_abdomen_philips"))
    base = medcodec.read(src_entry.path).array
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "volume.npy"
        with open(src, "wb") as f:  # written slab by slab: this process never holds the volume
            shape = (args.slices, *base.shape[1:])
            np.lib.format.write_array_header_1_0(f, {"descr": "<i2", "fortran_order": False, "shape": shape})
            for z in range(0, args.slices, base.shape[0]):
                f.write(base[: min(base.shape[0], args.slices - z)].astype("<i2").tobytes())
        raw = np.prod(shape) * 2
        stream, out = Path(tmp) / "volume.mcz", Path(tmp) / "volume.nii"
        print(f"{shape[0]}×{shape[1]}×{shape[2]} int16, {raw / 1e9:.2f} GB raw, max_error={args.max_error}")
        for step in ("compress", "decompress"):
            res = subprocess.run(
                [sys.executable, "-c", _CHILD, step, str(src), str(stream), str(out), str(args.max_error)],
                check=True,
                capture_output=True,
                encoding="utf-8",
            )
            seconds, peak = res.stdout.split()
            print(f"{step}: peak resident {peak} MB, {seconds} s, {raw / 1e6 / float(seconds):.1f} MB/s")
        print(f"stream {stream.stat().st_size / 1e6:.0f} MB ({8 * stream.stat().st_size / np.prod(shape):.3f} bpv)")
        decoded = np.memmap(out, dtype="<i2", mode="r", offset=352, shape=shape)
        original = np.load(src, mmap_mode="r")
        worst = max(
            int(np.abs(decoded[z : z + 100].astype(np.int32) - original[z : z + 100]).max())
            for z in range(0, shape[0], 100)
        )
        print(f"decoded .nii against the source: max error {worst}")


if __name__ == "__main__":
    main()
