"""Many files in one command: finding the inputs, naming the outputs, running the jobs.

``medcodec compress DIR... -r --jobs N`` (and ``decompress``) turn each input into one
output through the single-file command, so that a batch behaves file by file as single
commands do (atomic outputs, the same errors). A failure is recorded for its file and the
batch goes on; nothing partial is left behind. Jobs run in this process, in a pool of
processes (``--jobs N``), or on a Dask cluster (``--scheduler ADDRESS``, the ``dask``
extra), whichever is asked.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, MedcodecError, VolumeIOError
from .files.images import VOLUME_SUFFIXES
from .format.container import STREAM_SUFFIX

__all__ = ["Job", "find_inputs", "plan_jobs", "run_jobs"]

#: Endings of the volume files a folder walk picks up for compress.


@dataclass(frozen=True)
class Job:
    """One input and where its output goes."""

    source: Path
    output: Path


def _is_dicom_folder(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() == ".dcm" for f in folder.iterdir())


def find_inputs(paths: list[str], *, recursive: bool, command: str) -> Iterator[tuple[Path, Path]]:
    """(input, the root it was found under) for each input a batch handles, in sorted order.

    compress takes volume files and DICOM series folders (a folder holding ``.dcm`` files);
    decompress takes ``.mcz`` files. A folder given without ``recursive`` is itself an input
    (a DICOM series) for compress, and an error for decompress.
    """
    for name in paths:
        path = Path(name)
        if not path.exists():
            yield path, path.parent
            continue
        if path.is_file() or (command == "compress" and not recursive):
            yield path, path.parent
            continue
        if not recursive:
            raise InvalidInputError(f"{path} is a folder: give -r to take the streams inside it")
        for root, dirs, files in os.walk(path):
            dirs.sort()
            here = Path(root)
            if command == "compress" and _is_dicom_folder(here):
                yield here, path.parent
                dirs[:] = []  # a series folder is one input; its subfolders are its own
                continue
            wanted = VOLUME_SUFFIXES if command == "compress" else (STREAM_SUFFIX,)
            for f in sorted(files):
                if f.lower().endswith(wanted) and not f.startswith("."):
                    yield here / f, path.parent


def plan_jobs(inputs: list[tuple[Path, Path]], out_dir: str | None, default: Callable[[Path], Path]) -> list[Job]:
    """Each input's output: its default name beside it, or under ``out_dir`` at the same
    relative path as below the folder it was found in."""
    jobs = []
    for source, root in inputs:
        target = default(source)
        if out_dir is not None:
            try:
                rel = target.relative_to(root) if root != Path(".") else target
            except ValueError:
                rel = Path(target.name)
            target = Path(out_dir) / rel
        jobs.append(Job(source, target))
    outputs = [j.output for j in jobs]
    if len(set(outputs)) != len(outputs):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise InvalidInputError(f"two inputs would both write {dup}; give them separate folders")
    return jobs


def _run_one(command: Callable[[argparse.Namespace], int], args: argparse.Namespace, job: Job) -> dict[str, Any]:
    start = time.perf_counter()
    one = argparse.Namespace(
        **{**vars(args), "input": str(job.source), "output": str(job.output), "quiet": True, "json": False}
    )
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        command(one)
    except MedcodecError as exc:
        return {
            "file": str(job.source),
            "output": str(job.output),
            "ok": False,
            "error": type(exc).__name__,
            "message": " ".join(str(exc).split()),
            "exit_code": exc.exit_code,
        }
    except OSError as exc:
        return {
            "file": str(job.source),
            "output": str(job.output),
            "ok": False,
            "error": VolumeIOError.__name__,
            "message": str(exc),
            "exit_code": VolumeIOError.exit_code,
        }
    source_bytes = _size(job.source)
    return {
        "file": str(job.source),
        "output": str(job.output),
        "ok": True,
        "input_bytes": source_bytes,
        "output_bytes": _size(job.output),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def run_jobs(
    command: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    jobs: list[Job],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    on_done: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``command`` (a single-file CLI command) for every job; one record per job, in job order."""
    records: list[dict[str, Any] | None] = [None] * len(jobs)

    def done(i: int, record: dict[str, Any]) -> None:
        records[i] = record
        if on_done:
            on_done(record, sum(r is not None for r in records), len(jobs))

    if scheduler is not None:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise InvalidInputError("--scheduler needs dask.distributed: pip install 'medcodec[dask]'") from None
        with Client(scheduler) as client:
            futures = {client.submit(_run_one, command, args, job, pure=False): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    elif workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_one, command, args, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    else:
        for i, job in enumerate(jobs):
            done(i, _run_one(command, args, job))
    return [r for r in records if r is not None]
