"""Training the transform coder's table prior on real volumes, resumable.

Usage::

    python -m medcodec.training tables --out runs/tables                  # count, then write the prior
    python -m medcodec.training tables --out runs/tables --export weights/

(``python -m medcodec.training.tables`` is the same command.)

Every integer volume of the ``train`` split is compressed at :data:`QUALITIES` without a
prior, and the frequency tables its transform tiles send are summed per group key
(:class:`medcodec.coding.priors.TableCounts`). Each volume's counts are saved in the run folder
as they finish (``counts/<file>.npz``), so running the command again continues where it
stopped; the prior is written from the counts of every volume once all are done. The run takes
about 7 minutes on two cores for the 17 integer train volumes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..codec import compress, integer_valued
from ..coding.priors import NO_PRIOR, TableCounts, save_prior
from ..coding.transform import section_tables
from ..files.images import read
from ..format.container import FLAG_TRANSFORM, read_stream
from ..format.tile import TilePath, read_head, read_sections
from ..format.tiling import tile_grid
from ..volume import Volume
from .datasets import DataEntry, find_data_dir, load_manifest

__all__ = ["QUALITIES", "stream_counts", "volume_counts", "count_volumes", "main"]

#: The qualities a prior is trained at: they span the rates users pick (about 0.1 to 4 bpv).
QUALITIES = (30, 45, 60, 75, 90)


def stream_counts(stream: bytes) -> TableCounts:
    """The frequency tables that a stream's transform tiles send, summed per group key.

    Raises:
        CorruptStreamError: The stream is damaged, or its tables refer to a prior.
    """
    header, chunks = read_stream(stream)
    counts = TableCounts()
    if not header.flags & FLAG_TRANSFORM:
        return counts
    tiles = tile_grid(header.shape, header.tile)
    for chunk, tile in zip((c for c in chunks if c.kind == b"TILE"), tiles):
        if read_head(chunk.payload).path != TilePath.TRANSFORM:
            continue
        sections, _ = read_sections(chunk.payload, TilePath.TRANSFORM)
        shape = tuple(s.stop - s.start for s in tile)
        for key, tokens, signs in section_tables(sections[0], shape):
            if tokens.shape[1]:
                counts.add(key, tokens, signs)
    return counts


def volume_counts(volume: Volume | np.ndarray, qualities: Iterable[int] = QUALITIES) -> TableCounts:
    """The table counts of one volume coded at each of ``qualities`` without a prior."""
    counts = TableCounts()
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if not integer_valued(array):
        return counts  # the learned path codes it: no frequency tables to count
    for q in qualities:
        counts.merge(stream_counts(compress(volume, quality=q, tables=NO_PRIOR)))
    return counts


def _train_entries(data_dir: Path, sites: Iterable[str] | None = None) -> list[DataEntry]:
    """The train split's integer volumes (only they use the transform coder), of ``sites`` if given."""
    wanted = set(sites) if sites is not None else None
    return [
        e
        for e in load_manifest(data_dir, "train")
        if np.dtype(e.dtype).kind in "iu" and e.path.is_file() and (wanted is None or e.site in wanted)
    ]


def count_volumes(out: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> TableCounts:
    """Count every volume of ``paths`` not yet counted in ``out/counts``; returns the sum over all.

    Volumes of fractional floats are counted as empty (the transform coder codes integers only).
    """
    folder = Path(out) / "counts"
    folder.mkdir(parents=True, exist_ok=True)
    total = TableCounts()
    for src in map(Path, paths):
        name = src.name.removesuffix(".gz").removesuffix(".nii")
        path = folder / f"{name}.npz"
        if not path.is_file():
            c = volume_counts(read(src))
            tmp = folder / f".tmp-{name}.npz"
            np.savez(tmp, **c.to_arrays())
            os.replace(tmp, path)
            print(f"counted {src.name}: {c.total()} table counts", flush=True)
        with np.load(path) as f:
            total.merge(TableCounts.from_arrays({k: f[k] for k in f.files}))
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m medcodec.training tables", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder (counts/ per volume)")
    p.add_argument("--data", help="data folder with manifest.json (default: MEDCODEC_DATA or ../shared/data)")
    p.add_argument("--export", metavar="DIR", help="write the prior file to DIR (default: the run folder)")
    args = p.parse_args(argv)
    data_dir = Path(args.data) if args.data else find_data_dir()
    if data_dir is None:
        p.error("no data folder: set MEDCODEC_DATA, give --data, or provide ../shared/data")
    entries = _train_entries(data_dir)
    total = count_volumes(args.out, [e.path for e in entries])
    meta = {"split": "train", "volumes": [e.path.name for e in entries], "qualities": list(QUALITIES)}
    path = save_prior(total, meta, args.export or args.out)
    print(json.dumps({"prior": str(path), "counts": total.total(), "volumes": len(entries)}))


if __name__ == "__main__":
    main()
