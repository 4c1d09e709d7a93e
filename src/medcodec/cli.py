"""The ``medcodec`` command-line tool.

Usage::

    medcodec compress scan.nii.gz                 # -> scan.mcz, lossy, default quality
    medcodec compress scan.nii.gz --max-error 2   # every voxel within +-2
    medcodec compress study/                      # -> study.mcd, a DICOM archive, byte-exact files
    medcodec compress study/ --max-error 2        # a lossy DICOM archive (new DICOM files on decompress)
    medcodec compress dicom_series/ --as-volume   # -> dicom_series.mcz, the series as one volume
    medcodec decompress scan.mcz -o scan.nrrd     # any format medcodec.write supports
    medcodec decompress study.mcd -o restored/    # every file of the study, at its relative path
    medcodec info scan.mcz [--json]               # header only, no decoding (an archive: its series)
    medcodec test a.mcz b.mcz study.mcd           # decode and verify, write nothing

Outputs are written atomically (a temporary file in the destination folder,
then a rename) and an existing file is never replaced without ``--force``.
Progress goes to stderr, the one-line summary to stdout; ``-q`` silences both.
An error prints one line, ``medcodec: error: <message>``, and exits with the code of its
class (:data:`medcodec.errors.EXIT_CODES`, which ``medcodec --help`` prints).
Set ``MEDCODEC_DEBUG=1`` to get the full traceback instead of the one line.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light modules at import time: ``medcodec --help`` must not wait for torch or SimpleITK.
from . import __version__
from .dicom.archive import ARCHIVE_SUFFIX
from .errors import EXIT_CODES, InvalidInputError, MedcodecError, OutputExistsError, VolumeIOError
from .files.atomic import write_atomic
from .files.images import DETACHED_SUFFIXES, VOLUME_SUFFIXES, volume_suffix
from .format.container import STREAM_SUFFIX

if TYPE_CHECKING:
    from .volume import Volume

__all__ = ["main", "build_parser", "default_compress_output", "default_decompress_output"]

#: Input endings replaced by ``.mcz`` when naming a default output (longest first): the volume
#: formats and a DICOM file.
_NAMED_SUFFIXES = (*VOLUME_SUFFIXES, ".dcm")

_EXIT_CODES = "\n".join(
    [
        "exit codes:",
        *(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
        "",
        "Set MEDCODEC_DEBUG=1 to see the traceback of an error.",
    ]
)


# --------------------------------------------------------------------------- paths


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """Return ``name`` without the first of ``suffixes`` it ends with (case-insensitive), else None."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def default_compress_output(source: str | os.PathLike) -> Path:
    """Name the ``.mcz`` file that ``medcodec compress SOURCE`` writes by default.

    Args:
        source: A volume file or a DICOM series folder.

    Returns:
        The path beside ``source`` with its volume extension replaced by ``.mcz``
        (``scan.nii.gz`` -> ``scan.mcz``, folder ``series/`` -> ``series.mcz``).
    """
    path = Path(source)
    if path.name in ("", ".", ".."):  # "." or "..": name the file after the real folder
        path = path.resolve()
    if path.is_dir():
        return path.with_name(path.name + STREAM_SUFFIX)
    stem = _strip_suffix(path.name, _NAMED_SUFFIXES)
    if stem is None:
        # Unknown ending: drop it (scan.img -> scan.mcz) unless that would name the input itself.
        stem = path.stem if path.suffix.lower() not in ("", STREAM_SUFFIX) else path.name
    return path.with_name(stem + STREAM_SUFFIX)


def default_archive_output(source: str | os.PathLike) -> Path:
    """Name the archive that ``medcodec compress STUDY_DIR`` writes by default: ``STUDY_DIR.mcd``
    beside the folder."""
    path = Path(source)
    if path.name in ("", ".", ".."):
        path = path.resolve()
    return path.with_name(path.name + ARCHIVE_SUFFIX)


def default_decompress_output(source: str | os.PathLike) -> Path:
    """Name the volume file that ``medcodec decompress SOURCE`` writes by default.

    Args:
        source: A compressed ``.mcz`` file.

    Returns:
        ``source`` with ``.mcz`` replaced by ``.nii.gz`` (or ``.nii.gz`` appended
        when it does not end in ``.mcz``). Where that file exists (usually the one the
        stream was made from), ``decompress`` writes ``NAME.decoded.nii.gz`` instead,
        unless ``--force`` asks to replace it.
    """
    path = Path(source)
    stem = _strip_suffix(path.name, (STREAM_SUFFIX,)) or path.name
    return path.with_name(stem + ".nii.gz")


def _beside_if_taken(default: Path, *, force: bool) -> Path:
    """A default volume name that is taken (usually by the file the stream was made from)
    gives way to ``NAME.decoded.nii.gz`` beside it, unless ``force`` asks to replace it."""
    suffix = next((x for x in VOLUME_SUFFIXES if default.name.endswith(x)), None)
    if not force and default.exists() and suffix:
        return default.with_name(default.name[: -len(suffix)] + ".decoded" + suffix)
    return default


def _batch_or_one(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command for one input as typed, or a batch of it over several inputs and folders."""

    def run(args: argparse.Namespace) -> int:
        if len(args.inputs) == 1 and not args.recursive and args.jobs == 1 and args.scheduler is None:
            args.input = args.inputs[0]
            return command(args)
        return _run_batch(command, args)

    run.__name__ = command.__name__
    return run


def _run_batch(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from .batch import Job, find_inputs, plan_jobs, run_jobs

    name = "compress" if command is _cmd_compress else "decompress"
    if args.output == "-" or "-" in args.inputs:
        raise InvalidInputError("a batch reads and writes files: - (stdin, stdout) takes a single input")
    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise InvalidInputError(f"with several inputs, -o names a folder; {args.output} is a file")
    if args.jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, got {args.jobs}")
    if name == "compress":
        args.as_volume = True  # a batch codes volumes: each DICOM series folder is read as one

    def default(source: Path) -> Path:
        if name == "compress":
            return default_compress_output(source)
        if _is_archive_file(source):
            return _archive_output(source, force=True)  # a folder; "taken" is decided below
        out = default_decompress_output(source)
        return out.with_name(out.name[: -len(".nii.gz")] + "." + args.format) if args.format else out

    jobs = plan_jobs(list(find_inputs(args.inputs, recursive=args.recursive, command=name)), args.output, default)
    if name == "decompress":
        jobs = [Job(j.source, _beside_if_taken(j.output, force=args.force)) for j in jobs]
        jobs = [
            Job(j.source, _folder_if_taken(j.output, force=args.force)) if _is_archive_file(j.source) else j
            for j in jobs
        ]
    if not jobs:
        raise InvalidInputError(f"no inputs to {name} in {', '.join(args.inputs)}")

    def report(record: dict[str, Any], done: int, total: int) -> None:
        if args.quiet or args.json:
            return
        if record["ok"]:
            ratio = _ratio(record["input_bytes"], record["output_bytes"]) if name == "compress" else ""
            print(f"[{done}/{total}] {record['file']} -> {record['output']} {ratio}".rstrip(), file=sys.stderr)
        else:
            print(f"[{done}/{total}] {record['file']}: FAILED: {record['message']}", file=sys.stderr)

    # Workers get the options only: the parser's closure does not travel to other processes.
    options = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    records = run_jobs(command, options, jobs, workers=args.jobs, scheduler=args.scheduler, on_done=report)
    failed = [r for r in records if not r["ok"]]
    if args.json:
        _print_json_list(records)
    elif not args.quiet:
        ok = [r for r in records if r["ok"]]
        into, out = sum(r["input_bytes"] for r in ok), sum(r["output_bytes"] for r in ok)
        total = f", {_human_size(into)} -> {_human_size(out)}" + (
            f" ({_ratio(into, out)})" if name == "compress" else ""
        )
        print(f"{len(records)} files: {len(ok)} done, {len(failed)} failed{total if ok else ''}")
    return failed[0]["exit_code"] if failed else 0


def _print_json_list(records: list[dict[str, Any]]) -> None:
    import json

    print(json.dumps(records, indent=2))


def _resolve_output(given: str | None, default: Path) -> Path:
    """Apply ``-o``: a path, or an existing folder that receives the default file name."""
    if given is None:
        return default
    out = Path(given)
    return out / default.name if out.is_dir() else out


def _check_input(source: Path) -> None:
    """Report a missing input first, before any complaint about the output it would give.

    Raises:
        VolumeIOError: ``source`` does not exist.
    """
    if not source.exists():
        raise VolumeIOError(f"no such file or folder: {source}")


def _refuse_stream_input(source: Path) -> None:
    """Catch ``compress x.mcz`` with a helpful message instead of SimpleITK's "no ImageIO".

    Raises:
        InvalidInputError: ``source`` is already a medcodec stream.
    """
    from .format.container import MAGIC

    if source.is_file():
        with open(source, "rb") as f:
            head = f.read(len(MAGIC))
        if head == MAGIC or _is_archive_head(head):
            raise InvalidInputError(f"{source} is already a medcodec stream; did you mean 'medcodec decompress'?")


def _is_archive_head(head: bytes) -> bool:
    from .dicom.archive import is_archive

    return is_archive(head)


def _is_archive_file(source: Path) -> bool:
    """Whether ``source`` is a DICOM archive (``.mcd``), by its magic number."""
    if str(source) == "-" or not source.is_file():
        return False
    try:
        with open(source, "rb") as f:
            return _is_archive_head(f.read(16))
    except OSError:
        return False


def _check_output(dest: Path, source: Path, *, force: bool) -> None:
    """Fail before any expensive work if ``dest`` cannot be written.

    Raises:
        InvalidInputError: ``dest`` is the input itself.
        OutputExistsError: ``dest`` exists and ``force`` is false.
        VolumeIOError: ``dest`` is a folder, or its parent folder does not exist.
    """
    if dest.exists() and source.exists() and os.path.samefile(dest, source):
        raise InvalidInputError(f"output {dest} is the input itself; give another name with -o")
    if dest.is_dir():
        raise VolumeIOError(f"output {dest} is a folder")
    if dest.exists() and not force:
        raise OutputExistsError(f"{dest} exists; use --force to overwrite it")
    if not dest.parent.is_dir():
        raise VolumeIOError(f"cannot write {dest}: folder {dest.parent} does not exist")


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not expose a file whose data is still in flight

    return write


def _read_bytes(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise VolumeIOError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise VolumeIOError(f"{path} is a folder, not a compressed file") from None
    except OSError as exc:
        raise VolumeIOError(f"cannot read {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- output helpers


class _Progress:
    """The ``progress(done, total)`` callback: a live line on a terminal, sparse lines in a log."""

    def __init__(self, verb: str, *, enabled: bool) -> None:
        self._verb = verb
        self._enabled = enabled
        self._tty = enabled and sys.stderr.isatty()
        self._last_decile = -1
        self._line_open = False

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total <= 0:
            return
        message = f"{self._verb}: tile {done}/{total}"
        if self._tty:
            sys.stderr.write(f"\r{message}\x1b[K")
            self._line_open = True
        else:
            # Redirected to a log: about ten lines per run rather than one per tile.
            decile = done * 10 // total
            if decile == self._last_decile:
                return
            self._last_decile = decile
            sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Erase the live line so that a summary or error starts on a clean line."""
        if self._line_open:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._line_open = False


def _human_size(n: float) -> str:
    """Size with decimal units, as file managers show it: 52400000 -> '52.4 MB'."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _ratio(raw: int, compressed: int) -> str:
    return f"{raw / compressed:.1f}:1" if compressed else "n/a"


def _describe_mode(mode: str, max_error: float | None, quality: int | None) -> str:
    if mode == "lossless":
        return "lossless"
    if mode == "near-lossless":
        return f"max error {max_error:g}" if max_error is not None else "near-lossless"
    return f"lossy, quality {quality}" if quality is not None else "lossy"


def _fmt_floats(values: Sequence[float], sep: str = " x ") -> str:
    # Rounding hides float noise such as 3.4e-19 in a direction matrix; "+ 0.0" turns -0 into 0.
    return sep.join(f"{round(v, 6) + 0.0:g}" for v in values)


# --------------------------------------------------------------------------- commands


def _cmd_compress(args: argparse.Namespace) -> int:
    from . import compress, info, read  # heavy: numpy, SimpleITK, torch

    start = time.perf_counter()
    source = Path(args.input)
    _check_input(source)
    if source.is_dir() and not args.as_volume:
        return _compress_study(args, source, start)
    to_stdout = args.output == "-"
    dest = Path("-") if to_stdout else _resolve_output(args.output, default_compress_output(source))
    if not to_stdout:
        if dest.name.lower().endswith(VOLUME_SUFFIXES):
            raise InvalidInputError(
                f"{dest.name!r} names a volume file; a compressed stream is written as {STREAM_SUFFIX}"
            )
        _check_output(dest, source, force=args.force)

    _refuse_stream_input(source)
    max_error = 0.0 if args.lossless else args.max_error
    keep = None
    if args.strip_metadata or args.anonymize:
        from .files.privacy import anonymized

        keep = (lambda m: {}) if args.strip_metadata else anonymized
    if not to_stdout and _out_of_core(source):
        return _compress_large(args, source, dest, max_error, keep, start)
    volume = read(source)
    if keep is not None:
        volume.metadata = keep(volume.metadata)
    progress = _Progress("compressing", enabled=not args.quiet)
    try:
        data = compress(
            volume, quality=args.quality, max_error=max_error, model=args.model, tables=args.tables, progress=progress
        )
    finally:
        progress.close()
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(dest, _write_bytes(data), force=args.force)

    if args.json:
        header = info(data)
        file_size = source.stat().st_size if source.is_file() else None
        _print_json(
            {
                "file": args.input,
                "output": "-" if to_stdout else str(dest),
                "mode": header.mode,
                "max_error": header.max_error,
                "quality": header.quality,
                "raw_bytes": volume.array.nbytes,
                "input_file_bytes": file_size,
                "stream_bytes": len(data),
                "seconds": round(time.perf_counter() - start, 3),
            },
            to_stderr=to_stdout,
        )
    elif not args.quiet:
        header = info(data)
        raw = volume.array.nbytes
        mode = _describe_mode(header.mode, header.max_error, header.quality)
        elapsed = time.perf_counter() - start
        file_size = source.stat().st_size if source.is_file() else None
        versus_file = f", {_ratio(file_size, len(data))} against the input file" if file_size else ""
        print(
            f"{args.input} -> {'stdout' if to_stdout else dest}: {_human_size(raw)} -> {_human_size(len(data))} "
            f"({_ratio(raw, len(data))} against raw voxels{versus_file}), {mode}, {elapsed:.1f} s",
            file=sys.stderr if to_stdout else sys.stdout,
        )
    return 0


#: Inputs (an uncompressed .nii or a .npy) and outputs at least this large are coded a z-slab
#: of tiles at a time from and to disk (medcodec.files.large), so memory stays bounded.
OUT_OF_CORE_BYTES = 512 << 20


def _large_stream(path: Path) -> bool:
    from . import info

    with open(path, "rb") as f:
        head = info(f.read(65536))
    return head.raw_bytes >= OUT_OF_CORE_BYTES


def _out_of_core(path: Path) -> bool:
    """Whether ``path`` is large and a file medcodec.files.large reads (else it is read whole, as any input)."""
    from .files.large import FILE_SUFFIXES, readable

    big = path.is_file() and path.name.lower().endswith(FILE_SUFFIXES) and path.stat().st_size >= OUT_OF_CORE_BYTES
    return big and readable(path)


def _compress_large(args, source: Path, dest: Path, max_error, keep, start: float) -> int:
    from .files.large import compress_file

    progress = _Progress("compressing", enabled=not args.quiet)
    try:
        header = compress_file(
            source,
            dest,
            quality=args.quality,
            max_error=max_error,
            model=args.model,
            tables=args.tables,
            progress=progress,
            force=args.force,
            metadata=keep,
        )
    finally:
        progress.close()
    import numpy as np

    size, raw = dest.stat().st_size, math.prod(header.shape) * np.dtype(header.dtype).itemsize
    if args.json:
        _print_json(
            {
                "file": args.input,
                "output": str(dest),
                "mode": header.mode,
                "max_error": header.max_error,
                "quality": header.quality if header.mode == "lossy" else None,
                "raw_bytes": raw,
                "input_file_bytes": source.stat().st_size,
                "stream_bytes": size,
                "seconds": round(time.perf_counter() - start, 3),
                "out_of_core": True,
            }
        )
    elif not args.quiet:
        print(
            f"{args.input} -> {dest}: {_human_size(raw)} -> {_human_size(size)} ({_ratio(raw, size)} against raw "
            f"voxels), {_describe_mode(header.mode, header.max_error, header.quality)}, slab by slab, "
            f"{time.perf_counter() - start:.1f} s"
        )
    return 0


def _cmd_decompress(args: argparse.Namespace) -> int:
    from . import decompress, write  # heavy: numpy, SimpleITK, torch

    start = time.perf_counter()
    source = Path(args.input)
    if _is_archive_file(source):
        return _decompress_study(args, source, start)
    if args.output == "-":
        raise InvalidInputError("a volume is written to a file: its name's ending picks the format (-o NAME.nii.gz)")
    if args.input == "-":
        if args.output is None:
            raise InvalidInputError("reading the stream from stdin, give the volume's file name with -o")
    else:
        _check_input(source)
    default = default_decompress_output(source)
    if getattr(args, "format", None):
        default = default.with_name(default.name[: -len(".nii.gz")] + "." + args.format)
    dest = _resolve_output(args.output, default)
    if args.output is None or Path(args.output).is_dir():
        dest = _beside_if_taken(dest, force=args.force)
    suffix = volume_suffix(dest.name)  # checked before decoding, which can take a while
    _check_output(dest, source, force=args.force)

    if (
        args.input != "-"
        and args.region is None
        and dest.name.lower().endswith((".nii", ".npy"))
        and _large_stream(source)
    ):
        from .files.large import decompress_file

        progress = _Progress("decompressing", enabled=not args.quiet)
        try:
            decompress_file(source, dest, model=args.model, tables=args.tables, progress=progress, force=args.force)
        finally:
            progress.close()
        if not args.quiet:
            print(f"{args.input} -> {dest}: slab by slab, {time.perf_counter() - start:.1f} s")
        return 0
    data = _read_bytes(source)  # "-": stdin
    progress = _Progress("decompressing", enabled=not args.quiet)
    try:
        volume = decompress(
            data, model=args.model, tables=args.tables, progress=progress, region=args.region, model_dirs=args.model_dir
        )
    finally:
        progress.close()
    compress_output = getattr(args, "compress_output", None)
    if compress_output is not None:
        write = functools.partial(write, compress=compress_output)
    _write_volume(volume, dest, suffix, force=args.force, write=write)

    if args.json:
        _print_json(
            {
                "file": args.input,
                "output": str(dest),
                "stream_bytes": len(data),
                "raw_bytes": volume.array.nbytes,
                "shape": list(volume.shape),
                "dtype": str(volume.dtype),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    elif not args.quiet:
        elapsed = time.perf_counter() - start
        print(
            f"{args.input} -> {dest}: {_human_size(len(data))} -> {_human_size(volume.array.nbytes)}, {elapsed:.1f} s"
        )
    return 0


def _print_json(record: dict[str, Any], *, to_stderr: bool = False) -> None:
    import json

    print(json.dumps(record, indent=2), file=sys.stderr if to_stderr else sys.stdout)


def _write_volume(volume: Volume, dest: Path, suffix: str, *, force: bool, write: Callable[..., None]) -> None:
    if suffix in DETACHED_SUFFIXES:
        # The header names its data file, so it cannot be written under a temporary name.
        if dest.exists() and not force:
            raise OutputExistsError(f"{dest} exists; use --force to overwrite it")
        write(volume, dest)
        return
    write_atomic(dest, lambda tmp: write(volume, tmp), force=force, suffix=suffix)


def _cmd_test(args: argparse.Namespace) -> int:
    from . import decompress

    records, worst = [], 0
    for name in args.inputs:
        start = time.perf_counter()
        try:
            data = _read_bytes(Path(name))
            if _is_archive_head(data[:16]):
                archive = _test_study(data, args.model)
            else:
                vol = decompress(data, model=args.model)
        except MedcodecError as exc:
            record = {
                "file": name,
                "ok": False,
                "error": type(exc).__name__,
                "message": " ".join(str(exc).split()),
                "exit_code": exc.exit_code,
            }
            worst = worst or exc.exit_code
        else:
            if _is_archive_head(data[:16]):
                record = {
                    "file": name,
                    "ok": True,
                    "kind": "dicom-archive",
                    "files": archive.files,
                    "series": len(archive.series),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            else:
                record = {
                    "file": name,
                    "ok": True,
                    "shape": list(vol.shape),
                    "dtype": str(vol.dtype),
                    "seconds": round(time.perf_counter() - start, 3),
                }
        records.append(record)
        if not args.json and (not record["ok"] or not args.quiet):
            if record["ok"] and "files" in record:
                print(f"{name}: OK ({record['files']} files, {record['series']} series, checksums match)")
            elif record["ok"]:
                print(f"{name}: OK ({' x '.join(map(str, record['shape']))} {record['dtype']}, checksums match)")
            else:
                print(f"{name}: FAILED: {record['message']}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps(records, indent=2))
    return worst


def _region(text: str) -> tuple[slice, ...]:
    """``Z0:Z1,Y0:Y1,X0:X1`` as slices; an empty bound runs to the volume's edge."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"expected Z0:Z1,Y0:Y1,X0:X1, got {text!r}")
    out = []
    for part in parts:
        bounds = part.split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            lo, hi = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected Z0:Z1,Y0:Y1,X0:X1 with integer bounds, got {text!r}") from None
        out.append(slice(lo, hi))
    return tuple(out)


def _metadata_summary(keys: list[str] | None) -> str:
    if keys is None:
        return "unknown (the stream past its header is damaged)"
    if not keys:
        return "none"
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return f"{len(keys)} keys: {shown}"


def _cmd_info(args: argparse.Namespace) -> int:
    from . import info

    source = Path(args.input)
    data = _read_bytes(source)
    if _is_archive_head(data[:16]):
        return _info_study(args, source, data)
    header = info(data)
    raw, compressed = header.raw_bytes, header.compressed_bytes
    if args.json:
        import json

        record: dict[str, Any] = {"file": str(source), **header.as_dict()}
        print(json.dumps(record, indent=2, default=str))
        return 0

    n_voxels = math.prod(header.shape)
    if header.model_name:
        # A lossy integer stream (format 4.1) names its transform coder's table prior here.
        kind = "table prior " if header.format_version == "4.1" else ""
        model = f"{kind}{header.model_name} (sha256 {header.model_sha256[:16]}...)"
    else:
        model = "none (decodes without a network)"
    rows = [
        ("file", str(source)),
        ("format", f"medcodec stream version {header.format_version}"),
        ("shape", f"{' x '.join(str(s) for s in header.shape)} (z, y, x)"),
        ("dtype", header.dtype),
        ("spacing", f"{_fmt_floats(header.spacing)} mm (x, y, z)"),
        ("origin", f"{_fmt_floats(header.origin, ', ')} mm"),
        ("direction", " | ".join(_fmt_floats(header.direction[i : i + 3], " ") for i in (0, 3, 6))),
        ("mode", header.mode),
        ("max error", "0 (bit-exact)" if header.mode == "lossless" else _none_or(header.max_error)),
        ("quality", _none_or(header.quality)),
        ("model", model),
        ("metadata", _metadata_summary(header.metadata_keys)),
        ("tiles", f"{header.n_tiles} of {' x '.join(str(s) for s in header.tile_shape)}"),
        ("raw size", f"{_human_size(raw)} ({raw} bytes)"),
        ("compressed", f"{_human_size(compressed)} ({compressed} bytes)"),
        ("ratio", f"{_ratio(raw, compressed)}, {8 * compressed / n_voxels:.3f} bits/voxel" if n_voxels else "n/a"),
    ]
    width = max(len(key) for key, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")
    return 0


def _none_or(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- DICOM archives


def _compress_study(args: argparse.Namespace, source: Path, start: float) -> int:
    """``compress STUDY_DIR``: every file below the folder into one archive (medcodec.dicom)."""
    from .dicom.study import info, pack

    if args.strip_metadata or args.anonymize:
        raise InvalidInputError(
            "--strip-metadata and --anonymize apply to volumes: a DICOM archive keeps its files as they are "
            "(give --as-volume to code the series as one volume)"
        )
    to_stdout = args.output == "-"
    dest = Path("-") if to_stdout else _resolve_output(args.output, default_archive_output(source))
    if not to_stdout:
        if dest.name.lower().endswith(VOLUME_SUFFIXES):
            raise InvalidInputError(
                f"{dest.name!r} names a volume file; a DICOM archive is written as {ARCHIVE_SUFFIX}"
            )
        _check_output(dest, source, force=args.force)
    max_error = 0.0 if args.lossless else args.max_error
    data = pack(source, quality=args.quality, max_error=max_error, model=args.model)
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(dest, _write_bytes(data), force=args.force)
    a = info(data)
    if args.json:
        _print_json(
            {
                "file": args.input,
                "output": "-" if to_stdout else str(dest),
                "kind": "dicom-archive",
                "mode": a.mode,
                "files": a.files,
                "images": a.images,
                "series": len(a.series),
                "stored": a.stored,
                "input_file_bytes": a.file_bytes,
                "archive_bytes": a.archive_bytes,
                "seconds": round(time.perf_counter() - start, 3),
            },
            to_stderr=to_stdout,
        )
    elif not args.quiet:
        print(
            f"{args.input} -> {'stdout' if to_stdout else dest}: {a.files} files ({a.images} images in "
            f"{len(a.series)} series, {a.stored} stored whole), {_human_size(a.file_bytes)} -> "
            f"{_human_size(a.archive_bytes)} ({_ratio(a.file_bytes, a.archive_bytes)}), {a.mode}, "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr if to_stdout else sys.stdout,
        )
    return 0


def _archive_output(source: Path, *, force: bool) -> Path:
    """The folder an archive restores to by default: its name without ``.mcd``."""
    stem = _strip_suffix(source.name, (ARCHIVE_SUFFIX,)) or source.name + ".files"
    return _folder_if_taken(source.with_name(stem), force=force)


def _folder_if_taken(dest: Path, *, force: bool) -> Path:
    """``NAME.decoded`` where the folder ``NAME`` exists (usually the study the archive was made
    from), unless ``force`` asks to restore into it."""
    return dest.with_name(dest.name + ".decoded") if dest.exists() and not force else dest


def _decompress_study(args: argparse.Namespace, source: Path, start: float) -> int:
    """``decompress STUDY.mcd``: every file of the archive under a folder."""
    from .dicom.study import unpack

    if args.region is not None or args.format or getattr(args, "compress_output", None) is not None:
        raise InvalidInputError("--region, --format and --compress-output apply to volume streams, not DICOM archives")
    if args.output == "-":
        raise InvalidInputError("a DICOM archive restores to a folder: give it with -o")
    dest = Path(args.output) if args.output is not None else _archive_output(source, force=args.force)
    if dest.exists() and not dest.is_dir():
        raise VolumeIOError(f"output {dest} is a file; a DICOM archive restores to a folder")
    if not dest.parent.is_dir():
        raise VolumeIOError(f"cannot write {dest}: folder {dest.parent} does not exist")
    data = _read_bytes(source)
    written = unpack(data, dest, force=args.force, model=args.model)
    total = sum(p.stat().st_size for p in written)
    if args.json:
        _print_json(
            {
                "file": args.input,
                "output": str(dest),
                "kind": "dicom-archive",
                "files": len(written),
                "archive_bytes": len(data),
                "output_bytes": total,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    elif not args.quiet:
        print(
            f"{args.input} -> {dest}{os.sep}: {len(written)} files, {_human_size(len(data))} -> "
            f"{_human_size(total)}, {time.perf_counter() - start:.1f} s"
        )
    return 0


def _test_study(data: bytes, model: str | None):
    """Decode every series and check every file's SHA-256 (lossy series: their streams' checksums)."""
    from .dicom.archive import archive_info, restore_files

    for _ in restore_files(data, model=model):
        pass
    return archive_info(data)


def _info_study(args: argparse.Namespace, source: Path, data: bytes) -> int:
    from .dicom.archive import archive_info

    a = archive_info(data)
    if args.json:
        _print_json({"file": str(source), "kind": "dicom-archive", **a.as_dict()})
        return 0
    rows = [
        ("file", str(source)),
        ("format", f"medcodec DICOM archive version {a.format_version}"),
        ("mode", a.mode),
        ("files", f"{a.files}: {a.images} images in {len(a.series)} series, {a.stored} stored whole"),
        ("file bytes", f"{_human_size(a.file_bytes)} ({a.file_bytes} bytes)"),
        (
            "archive",
            f"{_human_size(a.archive_bytes)} ({a.archive_bytes} bytes), {_ratio(a.file_bytes, a.archive_bytes)}",
        ),
        ("headers", f"{_human_size(a.header_bytes)} compressed"),
        ("stored", f"{_human_size(a.stored_bytes)} compressed"),
    ]
    width = max(len(key) for key, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")
    for i, s in enumerate(a.series):
        label = " ".join(x for x in (s.modality, repr(s.description) if s.description else "") if x)
        pixels = s.files * s.rows * s.columns * (1 if s.dtype.endswith("int8") else 2)
        print(
            f"series {i}: {label + ', ' if label else ''}{s.files} files ({_human_size(s.file_bytes)}), "
            f"{s.rows} x {s.columns} {s.dtype}, {s.mode}, pixels {_human_size(pixels)} -> "
            f"{_human_size(s.stream_bytes)} ({s.uid or 'no Series Instance UID'})"
        )
    for f in a.stored_files:
        print(f"stored: {f['path']} ({_human_size(f['size'])}): {f['reason']}")
    return 0


# --------------------------------------------------------------------------- parser


def _max_error(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``medcodec`` command.

    Returns:
        The parser; each sub-command stores its handler in ``func``.
    """
    parser = argparse.ArgumentParser(
        prog="medcodec",
        description="Compress 3D medical volumes (NIfTI, NRRD, MetaImage, DICOM series) into .mcz files.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medcodec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("compress", "Compress a volume file into a .mcz file, or a DICOM study folder into a .mcd archive.")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="volume files (.nii, .nii.gz, .nrrd, .mha, .mhd) or a DICOM study folder (any number of "
        "series, nested folders): one .mcd archive that restores every file byte for byte, "
        "lossless unless --quality or --max-error is given",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output file or folder (default: INPUT with its extension replaced by .mcz, a folder "
        "INPUT.mcd; - for stdout); with several inputs, a folder that mirrors them",
    )
    p.add_argument(
        "--as-volume",
        action="store_true",
        help="read a DICOM series folder as one volume into a .mcz (the default in a batch: several "
        "inputs, -r, -j, --scheduler) instead of archiving its files",
    )
    _add_batch(p, "volume files and DICOM series folders")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quality",
        type=int,
        metavar="Q",
        help="lossy quality 1-100 (default mode, default 40): guarantees PSNR >= 20 + Q/2 dB over max - min",
    )
    mode.add_argument(
        "--max-error", type=_max_error, metavar="D", help="near-lossless: every voxel within +-D of the original"
    )
    mode.add_argument("--lossless", action="store_true", help="bit-exact (same as --max-error 0)")
    privacy = p.add_mutually_exclusive_group()
    privacy.add_argument("--strip-metadata", action="store_true", help="store no metadata (header fields, DICOM tags)")
    privacy.add_argument(
        "--anonymize",
        action="store_true",
        help="drop identifying metadata: patient, institution and visit DICOM tags, private tags, "
        "NIfTI free text (medcodec.files.privacy lists them)",
    )
    _add_common(p, model_help="model name or weights file (default: the built-in model)")
    p.set_defaults(func=_batch_or_one(_cmd_compress))

    p = add("decompress", "Decompress a .mcz file into a volume file, or a .mcd archive into its DICOM files.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="compressed .mcz files (- reads stdin) or .mcd archives")
    _add_batch(p, ".mcz files")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output volume file, format from its ending: .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd "
        "(default: FILE with .mcz replaced by .nii.gz); for a .mcd archive, the folder that receives its files "
        "(default: FILE without .mcd, or FILE.decoded where that exists)",
    )
    p.add_argument(
        "--format",
        choices=("nii.gz", "nii", "nrrd", "mha"),
        default=None,
        help="format of the default output name (default nii.gz); -o NAME picks it from NAME's ending",
    )
    squeeze = p.add_mutually_exclusive_group()
    squeeze.add_argument(
        "--compress-output",
        dest="compress_output",
        action="store_const",
        const=True,
        default=None,
        help="ask the volume format for its own compression (default: only .nii.gz)",
    )
    squeeze.add_argument(
        "--no-compress-output",
        dest="compress_output",
        action="store_const",
        const=False,
        help="write the volume uncompressed (a .nii.gz stays gzip framed, level 0 is not offered)",
    )
    p.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of model files, searched by name (repeatable; also MEDCODEC_MODEL_PATH)",
    )
    p.add_argument(
        "--region",
        type=_region,
        metavar="Z0:Z1,Y0:Y1,X0:X1",
        help="decode only this block (voxel indices, ends exclusive, any part may be empty: ':')",
    )
    _add_common(p, model_help="model name or weights file (default: the one the stream names)")
    p.set_defaults(func=_batch_or_one(_cmd_decompress))

    p = add("test", "Verify .mcz files and .mcd archives: decode each and check every checksum, writing nothing.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="compressed .mcz files or .mcd archives (- reads stdin)")
    p.add_argument(
        "--model", metavar="NAME_OR_PATH", help="model name or weights file (default: the one each stream names)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the failures")
    p.set_defaults(func=_cmd_test)

    p = add("info", "Show the header of a .mcz file, or the series and files of a .mcd archive, without decoding.")
    p.add_argument("input", metavar="FILE", help="compressed .mcz file or .mcd archive")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=_cmd_info)
    return parser


def _add_batch(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-r", "--recursive", action="store_true", help=f"take the {what} inside the folders given")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="files coded at once, in N processes")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the files on a Dask cluster (tcp://host:8786)")


def _add_common(p: argparse.ArgumentParser, *, model_help: str) -> None:
    p.add_argument("--model", metavar="NAME_OR_PATH", help=model_help)
    p.add_argument(
        "--tables",
        metavar="NAME_OR_PATH",
        help="table prior of lossy integer streams: a name or .mct file, 'none' to send every table "
        "(default: the shipped one when compressing, the one the stream names when decompressing)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr and no summary on stdout")


# --------------------------------------------------------------------------- entry point


def _error(message: str) -> None:
    # One line whatever the message holds, so scripts can grep or log it.
    text = " ".join(message.split())
    print(f"medcodec: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medcodec`` command.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code (see the module docstring). Usage errors exit 2 via ``SystemExit``.
    """
    args = build_parser().parse_args(argv)
    debug = os.environ.get("MEDCODEC_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end the line the terminal echoed "^C" on
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # stdout was closed early (medcodec info x.mcz | head -1): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MedcodecError as exc:
        if debug:
            raise
        _error(str(exc) or type(exc).__name__)
        return exc.exit_code
    except MemoryError:
        if debug:
            raise
        _error("out of memory")
        return 1
    except Exception as exc:  # a bug, or a failure no layer below anticipated
        if debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set MEDCODEC_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
