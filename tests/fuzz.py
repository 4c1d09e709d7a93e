"""A structure-aware mutation fuzzer of the decoder.

    python -m tests.fuzz [--seconds 60 | --count N] [--seed 0]

Seed streams (every tile path without a network: predictive lossless and near-lossless,
integer-valued float, palette and raw float, and metadata) are mutated at random, four ways: bytes flipped or
inserted anywhere (CRCs left stale), the stream truncated, a header field set to an
extreme value, or bytes of one chunk's payload changed, with every CRC recomputed so the
damage reaches the layers behind them. Each mutant is decoded (``info``, then
``decompress``) and counted as a clean refusal (a ``MedcodecError``), a harmless decode
(the original voxels), a wrong decode (other voxels: never acceptable), or a crash (any
other exception: never acceptable). The report gives the counts, the slowest decode and
the process's peak resident memory; the exit status is 1 when a wrong decode or a crash
occurred. The test suite runs a short budget of it (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable

import numpy as np

import medcodec
from medcodec import MedcodecError
from medcodec.format.container import Chunk, read_stream, write_stream

__all__ = ["Report", "fuzz", "seed_streams"]


def seed_streams() -> list[tuple[bytes, np.ndarray]]:
    """Small valid streams covering every tile path without a network, with their voxels."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:6, 0:20, 0:18]
    smooth = (200 * np.sin(x / 4.0) * np.cos(y / 5.0) + 10 * z).round()
    noisy = (smooth + rng.integers(0, 3, smooth.shape)).astype(np.int16)
    vols = [
        (medcodec.Volume(smooth.astype(np.int16), spacing=(0.7, 0.7, 2.5), metadata={"Modality": "CT"}), {}),
        (noisy, {"max_error": 2}),
        ((smooth + 1000).astype(np.float32), {}),  # integer-valued float: the predictive path
        (np.round(rng.normal(size=(3, 9, 11)), 2).astype(np.float32), {}),  # few fractional values: a palette
        (rng.normal(size=(2, 190, 180)).astype(np.float32), {}),  # more than 65,536 values: raw byte planes
        ((smooth * 70_000).astype(np.int32), {}),  # wide spans: raw bits past 16
        (medcodec.Volume(noisy, spacing=(1.0, 1.0, 1.0)), {"quality": 60}),  # lossy integers: the transform path
    ]
    out = []
    for vol, options in vols:
        data = medcodec.compress(vol, **(options or {"max_error": 0}))
        out.append((data, medcodec.decompress(data).array))
    return out


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        at = int(rng.integers(0, len(buf)))
        if rng.random() < 0.8:
            buf[at] ^= 1 << int(rng.integers(0, 8))
        else:
            buf[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
    return bytes(buf)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


_EXTREMES = (0, 1, -1, 2**31 - 1, 2**32 + 1, 2**62, -(2**63), 1e308, -1e308, float("nan"), float("inf"), 0.5)


def _header_field(data: bytes, rng: np.random.Generator) -> bytes:
    header, chunks = read_stream(data)
    fields = [
        f.name for f in dataclasses.fields(header) if f.name not in ("model_name", "model_sha256", "voxel_sha256")
    ]
    name = fields[int(rng.integers(0, len(fields)))]
    value = getattr(header, name)
    pick = _EXTREMES[int(rng.integers(0, len(_EXTREMES)))]
    if isinstance(value, tuple):
        value = tuple(pick if rng.random() < 0.5 else v for v in value)
    elif isinstance(value, str):
        value = ["uint8", "int8", "uint16", "int16", "int32", "uint32", "float32", "float64"][int(rng.integers(0, 8))]
    else:
        value = type(value)(pick) if isinstance(pick, (int, float)) and np.isfinite(pick) else pick
    setattr(header, name, value)
    try:
        return write_stream(header, chunks)
    except (struct.error, OverflowError, ValueError, TypeError):
        return data  # a value the header cannot even hold: nothing to decode


def _chunk_payload(data: bytes, rng: np.random.Generator) -> bytes:
    header, chunks = read_stream(data)
    i = int(rng.integers(0, len(chunks)))
    payload = bytearray(chunks[i].payload)
    if payload:
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(payload)))
            if rng.random() < 0.5:
                payload[at] ^= 1 << int(rng.integers(0, 8))
            else:
                payload[at] = int(rng.integers(0, 256))
    if rng.random() < 0.2:
        payload = payload[: int(rng.integers(0, len(payload) + 1))]
    chunks[i] = Chunk(chunks[i].kind, bytes(payload))
    if rng.random() < 0.1:
        rng.shuffle(chunks)
    return write_stream(header, chunks)  # every CRC sealed again


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "flip": _flip,
    "truncate": _truncate,
    "header-field": _header_field,
    "chunk-payload": _chunk_payload,
}


@dataclasses.dataclass
class Report:
    """What a fuzz run found."""

    outcomes: Counter = dataclasses.field(default_factory=Counter)
    by_mutation: Counter = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    slowest_s: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.outcomes["wrong decode"] and not self.outcomes["crash"]

    def summary(self) -> str:
        total = sum(self.outcomes.values())
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"{total} mutated streams ({', '.join(f'{k} {v}' for k, v in sorted(self.by_mutation.items()))}): "
            f"{parts}; slowest decode {self.slowest_s:.2f} s; peak resident memory {self.peak_rss_mb:.0f} MB"
        )


def _decode(data: bytes, original: np.ndarray) -> tuple[str, str | None]:
    try:
        medcodec.info(data)
        out = medcodec.decompress(data).array
    except MedcodecError:
        return "clean refusal", None
    except Exception:  # noqa: BLE001 - anything else is exactly what the fuzzer looks for
        return "crash", traceback.format_exc(limit=4)
    if out.dtype == original.dtype and out.shape == original.shape and np.array_equal(out, original, equal_nan=True):
        return "harmless decode", None
    return (
        "wrong decode",
        f"decoded {out.dtype} {out.shape} differing from the original {original.dtype} {original.shape}",
    )


def fuzz(*, count: int | None = None, seconds: float | None = None, seed: int = 0) -> Report:
    """Decode mutants of the seed streams until ``count`` are done or ``seconds`` pass."""
    rng = np.random.default_rng(seed)
    seeds = seed_streams()
    names = list(MUTATIONS)
    report = Report()
    end = time.monotonic() + seconds if seconds is not None else None
    n = 0
    while (count is None or n < count) and (end is None or time.monotonic() < end):
        data, original = seeds[int(rng.integers(0, len(seeds)))]
        how = names[int(rng.integers(0, len(names)))]
        mutant = MUTATIONS[how](data, rng)
        t = time.perf_counter()
        outcome, detail = _decode(mutant, original)
        report.slowest_s = max(report.slowest_s, time.perf_counter() - t)
        report.outcomes[outcome] += 1
        report.by_mutation[how] += 1
        if detail is not None and len(report.failures) < 20:
            report.failures.append(f"[{how}, mutant {n}] {detail}")
        n += 1
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None)
    budget.add_argument("--count", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None or args.count is not None else 60.0
    report = fuzz(count=args.count, seconds=seconds, seed=args.seed)
    print(report.summary())
    for failure in report.failures:
        print(failure, file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
