"""Peak memory of medcodec on a 512×512×N int16 volume, each step in its own process.

    PYTHONPATH=src:. python -m benchmarks.memory [--slices 300] [--quality 40 | --max-error 2]

The volume is real CT: the test split's abdomen CT (134×512×512) repeated along z to N
slices. Peak memory is the child process's peak resident set size (``VmHWM``, reset after
the source volume is prepared, so it counts the volume the call holds and native
allocations, not the reading); the resident size before the call is printed alongside so
the codec's own share can be read off.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import gc, resource, sys, time
import numpy as np
import medcodec
from medcodec.training.datasets import load_manifest
step, slices, quality, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def _status(key):
    # Linux: VmHWM is the peak resident set since the last reset, VmRSS the current one (kB).
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is held
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass


def current_rss():
    return _status("VmRSS:")


def peak_rss():
    return _status("VmHWM:")


options = {"quality": quality} if quality >= 0 else {"max_error": -1 - quality}
if step == "decode":
    data = open(path, "rb").read()
    base = current_rss()
    t = time.perf_counter(); vol = medcodec.decompress(data); dt = time.perf_counter() - t
    nbytes = vol.array.nbytes
else:
    src = next(e for e in load_manifest(split="test") if e.name.startswith("ct_abdomen_philips"))
    a = medcodec.read(src.path).array
    a = np.concatenate([a] * (-(-slices // a.shape[0])))[:slices].copy()  # only the measured volume stays
    medcodec.compress(a[:8, :64, :64])  # load the model outside the measurement
    del src
    gc.collect()
    reset_peak()  # reading and repeating the source peaked higher than holding the volume does
    base = current_rss()
    t = time.perf_counter(); data = medcodec.compress(a, **options); dt = time.perf_counter() - t
    open(path, "wb").write(data)
    nbytes = a.nbytes
peak = peak_rss()
print(f"{step}: {nbytes / 1e6:.0f} MB raw, peak RSS {peak / 1024:.0f} MB (before the call {base / 1024:.0f} MB), "
      f"{dt:.1f} s, {nbytes / 1e6 / dt:.1f} MB/s")
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--quality", type=int, default=40)
    p.add_argument("--max-error", type=int, default=None, help="measure this max_error instead of a quality")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "volume.mcz"
        # One integer argument carries the mode: a quality (>= 0), or -1 - max_error.
        code = args.quality if args.max_error is None else -1 - args.max_error
        for step in ("encode", "decode"):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, step, str(args.slices), str(code), str(stream)],
                check=True,
                capture_output=True,
                encoding="utf-8",
            )
            print(out.stdout.strip())


if __name__ == "__main__":
    main()
