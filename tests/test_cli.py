"""Tests of the ``medcodec`` command, run as a user types it (a subprocess per command).

The subprocess gets ``PYTHONPATH=<repo>/src`` so the tests need no installation.
Volumes are small (5 x 40 x 36) so that every command finishes quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medcodec
from medcodec import cli

SRC = Path(__file__).resolve().parents[1] / "src"

SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)
# A rotation of 30 degrees about z: geometry that a codec dropping direction would fail.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    """Run ``medcodec ARGS`` in this process through ``cli.main(argv)``, capturing what it prints.

    The same contract as a process (exit code, stdout, stderr) at a fraction of the cost;
    :func:`run_cli_process` starts the real console script for the few smoke tests.
    """
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    debug = os.environ.pop("MEDCODEC_DEBUG", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exc:  # argparse: usage errors, --help, --version
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        if debug is not None:
            os.environ["MEDCODEC_DEBUG"] = debug
    return subprocess.CompletedProcess([str(a) for a in args], code, out.getvalue(), err.getvalue())


def run_cli_process(*args: object, module: str = "medcodec") -> subprocess.CompletedProcess[str]:
    """Run the command as a user types it (``medcodec ARGS``), in its own process.

    The installed console script is used where it exists beside this interpreter (as after
    ``pip install``); otherwise ``python -m medcodec`` with ``src`` on the path.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env.pop("MEDCODEC_DEBUG", None)
    script = Path(sys.executable).parent / module.replace("_", "-")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", module]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=600
    )


def assert_error(proc: subprocess.CompletedProcess[str], code: int | tuple[int, ...]) -> str:
    """Check the failure contract: the exit code and exactly one ``medcodec: error:`` line."""
    codes = (code,) if isinstance(code, int) else code
    assert proc.returncode in codes, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("medcodec: error: "), lines[0]
    return lines[0]


def assert_no_leftovers(folder: Path) -> None:
    """No temporary file (``.NAME.xxxx``) survives a command."""
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def make_volume(seed: int = 0) -> medcodec.Volume:
    """A small CT-like int16 volume: a bright ellipsoid on a ramp, plus noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:5, 0:40, 0:36].astype(np.float64)
    inside = ((z - 2) / 3) ** 2 + ((y - 20) / 14) ** 2 + ((x - 17) / 11) ** 2 < 1
    array = -1000 + 8 * x + 900 * inside + rng.normal(0, 25, size=inside.shape)
    return medcodec.Volume(np.round(array).astype(np.int16), SPACING, ORIGIN, DIRECTION)


def assert_same_geometry(a: medcodec.Volume, b: medcodec.Volume) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scan.nii.gz`` and its lossless ``scan.mcz`` (made by the default-output path)."""
    folder = tmp_path_factory.mktemp("cli")
    medcodec.write(make_volume(), folder / "scan.nii.gz")
    proc = run_cli("compress", folder / "scan.nii.gz", "--lossless")
    assert proc.returncode == 0, proc.stderr
    return folder


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scan.nii.gz", "scan.mcz"),
        ("SCAN.NII.GZ", "SCAN.mcz"),
        ("scan.nii", "scan.mcz"),
        ("a.b.nrrd", "a.b.mcz"),
        ("scan.mha", "scan.mcz"),
        ("scan.mhd", "scan.mcz"),
        ("scan.img", "scan.mcz"),
        ("scan", "scan.mcz"),
        ("scan.mcz", "scan.mcz.mcz"),  # never the input itself
    ],
)
def test_default_compress_output(tmp_path: Path, name: str, expected: str) -> None:
    assert cli.default_compress_output(tmp_path / name) == tmp_path / expected


def test_default_compress_output_of_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "series").mkdir()
    assert cli.default_compress_output(str(tmp_path / "series") + "/") == tmp_path / "series.mcz"
    monkeypatch.chdir(tmp_path / "series")
    assert cli.default_compress_output(".") == tmp_path / "series.mcz"


@pytest.mark.parametrize(
    ("name", "expected"), [("scan.mcz", "scan.nii.gz"), ("x.y.MCZ", "x.y.nii.gz"), ("blob", "blob.nii.gz")]
)
def test_default_decompress_output(tmp_path: Path, name: str, expected: str) -> None:
    assert cli.default_decompress_output(tmp_path / name) == tmp_path / expected


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def fails(path: Path) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        cli.write_atomic(tmp_path / "out.mcz", fails, force=False)
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_no_clobber_and_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "out.mcz"
    cli.write_atomic(dest, lambda p: p.write_bytes(b"one"), force=False)
    with pytest.raises(medcodec.OutputExistsError):
        cli.write_atomic(dest, lambda p: p.write_bytes(b"two"), force=False)
    assert dest.read_bytes() == b"one"
    cli.write_atomic(dest, lambda p: p.write_bytes(b"three"), force=True)
    assert dest.read_bytes() == b"three"
    assert list(tmp_path.iterdir()) == [dest]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_unexpected_exception_is_one_line_exit_1(
    sample: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(data: bytes) -> None:
        raise RuntimeError("something\ninternal")

    monkeypatch.delenv("MEDCODEC_DEBUG", raising=False)
    monkeypatch.setattr(medcodec, "info", boom)
    assert cli.main(["info", str(sample / "scan.mcz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medcodec: error: unexpected RuntimeError: something internal")


def test_keyboard_interrupt_exits_130(
    sample: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(data: bytes) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(medcodec, "info", interrupted)
    assert cli.main(["info", str(sample / "scan.mcz")]) == 130
    assert capsys.readouterr().err.strip() == "medcodec: error: interrupted"


def test_every_error_class_has_a_documented_exit_code_and_help_lists_them_all() -> None:
    from medcodec import errors

    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert {c.exit_code for c in classes} <= set(errors.EXIT_CODES)
    lines = run_cli("--help").stdout.split("exit codes:")[1].splitlines()
    listed = {int(line.split()[0]) for line in lines if line.strip()[:1].isdigit()}
    assert listed == set(errors.EXIT_CODES)


# --------------------------------------------------------------------------- subprocess


def test_help_and_version() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "compress" in proc.stdout and "exit codes" in proc.stdout
    proc = run_cli_process("--version", module="medcodec.cli")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"medcodec {medcodec.__version__}"


def test_no_command_is_a_usage_error() -> None:
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_compress_default_output_and_lossless_round_trip(sample: Path) -> None:
    # The fixture ran `medcodec compress scan.nii.gz --lossless` with no -o.
    assert (sample / "scan.mcz").is_file()
    out = sample / "roundtrip.nii.gz"
    proc = run_cli("decompress", sample / "scan.mcz", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "decompressing: tile" in proc.stderr  # progress, not suppressed without -q
    original, restored = medcodec.read(sample / "scan.nii.gz"), medcodec.read(out)
    assert restored.array.dtype == original.array.dtype == np.int16
    np.testing.assert_array_equal(restored.array, original.array)
    assert_same_geometry(restored, original)
    np.testing.assert_allclose(restored.direction, DIRECTION, atol=1e-5)
    assert_no_leftovers(sample)


def test_compress_summary_and_progress(tmp_path: Path) -> None:
    medcodec.write(make_volume(1), tmp_path / "scan.nrrd")
    proc = run_cli("compress", tmp_path / "scan.nrrd", "--lossless")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scan.mcz").is_file()
    summary = proc.stdout.strip()
    assert "\n" not in summary
    assert "scan.nrrd -> " in summary and "scan.mcz" in summary and "lossless" in summary and ":1" in summary
    assert "compressing: tile" in proc.stderr


def test_max_error_bound_holds_and_quiet(tmp_path: Path) -> None:
    medcodec.write(make_volume(2), tmp_path / "scan.nii.gz")
    proc = run_cli("compress", tmp_path / "scan.nii.gz", "--max-error", "2", "-o", tmp_path / "near.mcz", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    proc = run_cli("decompress", tmp_path / "near.mcz", "-o", tmp_path / "near.nii.gz", "-q")
    assert proc.returncode == 0, proc.stderr
    original, restored = medcodec.read(tmp_path / "scan.nii.gz"), medcodec.read(tmp_path / "near.nii.gz")
    assert restored.array.dtype == original.array.dtype
    error = np.abs(restored.array.astype(np.int64) - original.array.astype(np.int64))
    assert error.max() <= 2
    assert_same_geometry(restored, original)
    header = json.loads(run_cli("info", tmp_path / "near.mcz", "--json").stdout)
    assert header["mode"] == "near-lossless" and header["max_error"] == 2


def test_quality(tmp_path: Path) -> None:
    quality = medcodec.DEFAULT_QUALITY
    medcodec.write(make_volume(3), tmp_path / "scan.mha")
    proc = run_cli("compress", tmp_path / "scan.mha", "--quality", quality, "-q")
    assert proc.returncode == 0, proc.stderr
    header = json.loads(run_cli("info", tmp_path / "scan.mcz", "--json").stdout)
    assert header["mode"] == "lossy" and header["quality"] == quality
    proc = run_cli("decompress", tmp_path / "scan.mcz", "-q")  # default output: scan.nii.gz
    assert proc.returncode == 0, proc.stderr
    restored = medcodec.read(tmp_path / "scan.nii.gz")
    assert restored.shape == (5, 40, 36) and restored.array.dtype == np.int16
    assert_same_geometry(restored, medcodec.read(tmp_path / "scan.mha"))


def test_info_human_and_json(sample: Path) -> None:
    proc = run_cli("info", sample / "scan.mcz")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for expected in ("5 x 40 x 36", "int16", "0.7 x 0.8 x 2.5", "lossless", "ratio"):
        assert expected in text, (expected, text)

    proc = run_cli("info", sample / "scan.mcz", "--json")
    assert proc.returncode == 0, proc.stderr
    header = json.loads(proc.stdout)
    assert header["shape"] == [5, 40, 36]
    assert header["dtype"] == "int16"
    assert header["mode"] == "lossless"
    assert header["raw_bytes"] == 5 * 40 * 36 * 2
    assert header["compressed_bytes"] == (sample / "scan.mcz").stat().st_size
    np.testing.assert_allclose(header["spacing"], SPACING, atol=1e-5)
    np.testing.assert_allclose(header["direction"], DIRECTION, atol=1e-5)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    medcodec.write(make_volume(4), tmp_path / "scan.nii.gz")
    (tmp_path / "scan.mcz").write_bytes(b"precious")
    proc = run_cli("compress", tmp_path / "scan.nii.gz", "--lossless")
    assert "--force" in assert_error(proc, 9)
    assert (tmp_path / "scan.mcz").read_bytes() == b"precious"

    proc = run_cli("compress", tmp_path / "scan.nii.gz", "--lossless", "--force", "-q")
    assert proc.returncode == 0, proc.stderr
    assert run_cli("info", tmp_path / "scan.mcz").returncode == 0

    # decompress's default output, scan.nii.gz, is the original here: it survives, and the
    # volume goes beside it; a second run finds that name taken too and refuses.
    before = (tmp_path / "scan.nii.gz").read_bytes()
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-q"]) == 0
    assert (tmp_path / "scan.nii.gz").read_bytes() == before
    assert np.array_equal(medcodec.read(tmp_path / "scan.decoded.nii.gz").array, make_volume(4).array)
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-q", "-o", str(tmp_path / "scan.decoded.nii.gz")]) == 9
    assert_no_leftovers(tmp_path)


def test_missing_input(tmp_path: Path) -> None:
    for args in (("compress", "nope.nii.gz"), ("decompress", "nope.mcz"), ("info", "nope.mcz")):
        proc = run_cli(args[0], tmp_path / args[1])
        assert "nope" in assert_error(proc, 8)
    assert list(tmp_path.iterdir()) == []
    # A missing input is reported as such even when its default output exists.
    (tmp_path / "nope.mcz").write_bytes(b"old")
    assert_error(run_cli("compress", tmp_path / "nope.nii.gz"), 8)


def test_corrupt_and_truncated_streams(sample: Path, tmp_path: Path) -> None:
    data = bytearray((sample / "scan.mcz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.mcz").write_bytes(bytes(data))
    assert_error(run_cli("decompress", tmp_path / "flipped.mcz", "-o", tmp_path / "out.nii.gz", "-q"), (3, 4))

    (tmp_path / "short.mcz").write_bytes((sample / "scan.mcz").read_bytes()[: len(data) // 2])
    assert_error(run_cli("decompress", tmp_path / "short.mcz", "-o", tmp_path / "out.nii.gz", "-q"), 3)

    # A file that is no medcodec stream at all.
    assert_error(run_cli("info", sample / "scan.nii.gz"), (3, 4))

    assert not (tmp_path / "out.nii.gz").exists()
    assert_no_leftovers(tmp_path)


def test_unknown_model(sample: Path, tmp_path: Path) -> None:
    proc = run_cli("compress", sample / "scan.nii.gz", "--model", "no-such-model", "-o", tmp_path / "x.mcz", "-q")
    assert "no-such-model" in assert_error(proc, 6)
    assert list(tmp_path.iterdir()) == []


def test_the_table_prior_option(sample: Path, tmp_path: Path) -> None:
    lossy, plain = tmp_path / "lossy.mcz", tmp_path / "plain.mcz"
    assert run_cli("compress", sample / "scan.nii.gz", "--quality", "50", "-o", lossy, "-q").returncode == 0
    assert (
        run_cli("compress", sample / "scan.nii.gz", "--quality", "50", "--tables", "none", "-o", plain, "-q").returncode
        == 0
    )
    assert medcodec.info(lossy.read_bytes()).format_version == "4.1"
    assert medcodec.info(plain.read_bytes()).format_version == "4.0"
    proc = run_cli("info", lossy)
    assert proc.returncode == 0 and "table prior tables-" in proc.stdout
    # Decoding with a prior other than the one the stream names is refused; nothing is written.
    other = tmp_path / "other.mct"
    other.write_bytes(b"MCTABLES")
    proc = run_cli("decompress", lossy, "--tables", other, "-o", tmp_path / "out.nii.gz")
    assert "table prior" in assert_error(proc, 6)
    assert not (tmp_path / "out.nii.gz").exists()
    assert (
        run_cli("compress", sample / "scan.nii.gz", "--tables", "no-such-prior", "-o", tmp_path / "x.mcz").returncode
        == 6
    )


@pytest.mark.parametrize(
    "options", [("--quality", "5", "--max-error", "2"), ("--lossless", "--max-error", "1"), ("--max-error", "-1")]
)
def test_bad_options_are_usage_errors(sample: Path, tmp_path: Path, options: tuple[str, ...]) -> None:
    proc = run_cli("compress", sample / "scan.nii.gz", "-o", tmp_path / "x.mcz", *options)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_format(sample: Path, tmp_path: Path) -> None:
    assert "format" in assert_error(run_cli("decompress", sample / "scan.mcz", "-o", tmp_path / "x.png"), 2)


def test_compressing_a_stream_is_refused(sample: Path, tmp_path: Path) -> None:
    proc = run_cli("compress", sample / "scan.mcz", "-o", tmp_path / "x.mcz")
    assert "decompress" in assert_error(proc, 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_decompress_to_other_formats(sample: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"scan{suffix}"
    proc = run_cli("decompress", sample / "scan.mcz", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    original, restored = medcodec.read(sample / "scan.nii.gz"), medcodec.read(out)
    np.testing.assert_array_equal(restored.array, original.array)
    assert_same_geometry(restored, original)
    assert_no_leftovers(tmp_path)


def test_output_into_existing_folder(sample: Path, tmp_path: Path) -> None:
    proc = run_cli("decompress", sample / "scan.mcz", "-o", tmp_path, "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scan.nii.gz").is_file()


def write_dicom_series(volume: medcodec.Volume, folder: Path) -> None:
    """Write one DICOM file per slice, tagged as SimpleITK's DicomSeriesReadModifyWrite example does."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    d = volume.direction
    series_tags = {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0060": "CT",
        "0008|103e": "medcodec CLI test",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in series_tags.items():
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.3.{k + 1}")
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_folder_input(tmp_path: Path) -> None:
    series = tmp_path / "series"
    write_dicom_series(make_volume(5), series)
    proc = run_cli("compress", str(series) + os.sep, "--as-volume", "--lossless", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "series.mcz").is_file()  # beside the folder, not inside it
    proc = run_cli("decompress", tmp_path / "series.mcz", "-q")
    assert proc.returncode == 0, proc.stderr
    original, restored = medcodec.read(series), medcodec.read(tmp_path / "series.nii.gz")
    np.testing.assert_array_equal(restored.array, original.array)
    assert_same_geometry(restored, original)
    np.testing.assert_allclose(original.spacing, SPACING, atol=1e-4)


def test_info_lists_the_metadata_keys_a_stream_carries(tmp_path: Path, capsys) -> None:
    vol = medcodec.Volume(
        make_volume(3).array, metadata={"0010|0010": "Doe^Jane", "0010|0020": "12345", "Modality": "MR"}
    )
    data = medcodec.compress(vol, max_error=0)
    assert medcodec.info(data).metadata_keys == ["0010|0010", "0010|0020", "Modality"]
    assert medcodec.info(medcodec.compress(make_volume(3), max_error=0)).metadata_keys == []
    assert medcodec.info(data[:-20]).metadata_keys is None  # damaged past the header: unknown, not absent
    (tmp_path / "s.mcz").write_bytes(data)
    assert cli.main(["info", str(tmp_path / "s.mcz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata_keys"] == ["0010|0010", "0010|0020", "Modality"]
    assert cli.main(["info", str(tmp_path / "s.mcz")]) == 0
    assert "3 keys: 0010|0010, 0010|0020, Modality" in capsys.readouterr().out


def test_streams_go_through_stdout_and_stdin(tmp_path: Path, capsysbinary, monkeypatch) -> None:
    import io

    medcodec.write(make_volume(3), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "--lossless", "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    data = captured.out
    assert medcodec.info(data).mode == "lossless" and b"against the input file" in captured.err
    assert not (tmp_path / "-").exists() and not Path("-").exists()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["decompress", "-", "-o", str(tmp_path / "back.nrrd"), "-q"]) == 0
    assert np.array_equal(medcodec.read(tmp_path / "back.nrrd").array, make_volume(3).array)


def test_output_names_that_mislead_are_refused(tmp_path: Path, capsys) -> None:
    medcodec.write(make_volume(3), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]) == 2
    assert "names a volume file" in capsys.readouterr().err and not (tmp_path / "out.nii.gz").exists()
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "-q"]) == 0
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-o", "-"]) == 2
    assert "written to a file" in capsys.readouterr().err


def test_decompress_a_region(tmp_path: Path) -> None:
    medcodec.write(make_volume(6), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "--lossless", "-q"]) == 0
    out = tmp_path / "part.nrrd"
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "--region", "1:3,:,4:10", "-o", str(out), "-q"]) == 0
    assert np.array_equal(medcodec.read(out).array, make_volume(6).array[1:3, :, 4:10])
    with pytest.raises(SystemExit):
        cli.main(["decompress", str(tmp_path / "scan.mcz"), "--region", "1-3", "-o", str(out), "-q"])


def test_test_verifies_every_file_and_reports_each_failure(tmp_path: Path, capsys) -> None:
    medcodec.write(make_volume(4), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "--lossless", "-q"]) == 0
    good = tmp_path / "scan.mcz"
    bad = tmp_path / "bad.mcz"
    bad.write_bytes(good.read_bytes()[:-40])
    assert cli.main(["test", str(good)]) == 0
    assert "OK (5 x 40 x 36 int16, checksums match)" in capsys.readouterr().out
    assert cli.main(["test", str(bad), str(good), "--json"]) == 3  # the first failure's code; the batch goes on
    records = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in records] == [False, True] and records[0]["error"] == "TruncatedStreamError"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mcz", "scan.mcz", "scan.nii.gz"]  # nothing written


def test_compress_and_decompress_summaries_as_json(tmp_path: Path, capsys) -> None:
    medcodec.write(make_volume(2), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "--max-error", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    stream = (tmp_path / "scan.mcz").stat().st_size
    assert (record["mode"], record["max_error"], record["stream_bytes"]) == ("near-lossless", 1.0, stream)
    assert record["input_file_bytes"] == (tmp_path / "scan.nii.gz").stat().st_size
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-o", str(tmp_path / "b.nrrd"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["shape"] == list(make_volume(2).shape) and record["output"] == str(tmp_path / "b.nrrd")


def test_metadata_can_be_stripped_or_anonymized(tmp_path: Path) -> None:
    from medcodec.files.privacy import identifying

    meta = {
        "0010|0010": "Doe^Jane",
        "0010|0020": "12345",
        "0009|1001": "vendor private",
        "0008|0060": "CT",
        "0028|0030": "0.7\\0.8",
        "descrip": "scan of Jane at St Elsewhere",
    }
    medcodec.write(medcodec.Volume(make_volume(1).array, metadata=meta), tmp_path / "scan.nrrd")
    stored = medcodec.read(tmp_path / "scan.nrrd").metadata
    assert (
        cli.main(
            ["compress", str(tmp_path / "scan.nrrd"), "--lossless", "--anonymize", "-q", "-o", str(tmp_path / "a.mcz")]
        )
        == 0
    )
    kept = medcodec.info((tmp_path / "a.mcz").read_bytes()).metadata_keys
    assert "0008|0060" in kept and not any(identifying(k) for k in kept)
    assert {"0010|0010", "0010|0020", "0009|1001", "descrip"} & set(stored) == {
        "0010|0010",
        "0010|0020",
        "0009|1001",
        "descrip",
    }
    assert not {"0010|0010", "0010|0020", "0009|1001", "descrip"} & set(kept)
    assert (
        cli.main(
            [
                "compress",
                str(tmp_path / "scan.nrrd"),
                "--lossless",
                "--strip-metadata",
                "-q",
                "-o",
                str(tmp_path / "s.mcz"),
            ]
        )
        == 0
    )
    assert medcodec.info((tmp_path / "s.mcz").read_bytes()).metadata_keys == []


def _site_tree(root: Path) -> None:
    """Two volumes, one in a subfolder, a DICOM series, an unreadable file and a stray text file."""
    (root / "site" / "sub").mkdir(parents=True)
    medcodec.write(make_volume(1), root / "site" / "a.nii.gz")
    medcodec.write(make_volume(2), root / "site" / "sub" / "b.nrrd")
    write_dicom_series(make_volume(3), root / "site" / "series")
    (root / "site" / "broken.nii.gz").write_bytes(b"not a volume")
    (root / "site" / "notes.txt").write_text("ignored")


def test_a_batch_goes_on_past_a_failure_and_mirrors_its_folders(tmp_path: Path, capsys) -> None:
    _site_tree(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["compress", str(tmp_path / "site"), "-r", "--lossless", "-o", str(out), "--json", "-j", "2"])
    records = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert code == 8 and not records["broken.nii.gz"]["ok"]  # the failure's exit code; the rest went on
    assert all(records[n]["ok"] for n in ("a.nii.gz", "b.nrrd", "series"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.mcz")) == [
        "site/a.mcz",
        "site/series.mcz",
        "site/sub/b.mcz",
    ]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary leftovers
    assert cli.main(["decompress", str(out), "-r", "-q"]) == 0
    assert np.array_equal(medcodec.read(out / "site" / "sub" / "b.nii.gz").array, make_volume(2).array)
    assert cli.main(["test", *map(str, sorted(out.rglob("*.mcz")))]) == 0


def test_a_batch_runs_on_a_dask_cluster(tmp_path: Path, capsys) -> None:
    distributed = pytest.importorskip("distributed")
    _site_tree(tmp_path)
    (tmp_path / "site" / "broken.nii.gz").unlink()
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        code = cli.main(
            [
                "compress",
                str(tmp_path / "site"),
                "-r",
                "--max-error",
                "1",
                "--scheduler",
                cluster.scheduler_address,
                "--json",
            ]
        )
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and len(records) == 3 and all(r["ok"] for r in records)
    back = medcodec.decompress((tmp_path / "site" / "a.mcz").read_bytes()).array
    assert np.abs(back.astype(np.int64) - make_volume(1).array).max() <= 1


def test_decompress_picks_the_format_and_its_compression(tmp_path: Path) -> None:
    medcodec.write(make_volume(2), tmp_path / "scan.nii.gz")
    assert cli.main(["compress", str(tmp_path / "scan.nii.gz"), "--lossless", "-q"]) == 0
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "--format", "nrrd", "-q"]) == 0
    assert np.array_equal(medcodec.read(tmp_path / "scan.nrrd").array, make_volume(2).array)
    plain, packed = tmp_path / "plain.nrrd", tmp_path / "packed.nrrd"
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-o", str(plain), "--no-compress-output", "-q"]) == 0
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "-o", str(packed), "--compress-output", "-q"]) == 0
    assert packed.stat().st_size < plain.stat().st_size
    assert np.array_equal(medcodec.read(packed).array, medcodec.read(plain).array)
    assert cli.main(["decompress", str(tmp_path / "scan.mcz"), "--format", "nrrd", "-q"]) == 0  # taken: beside it
    assert (tmp_path / "scan.decoded.nrrd").is_file()


def test_the_installed_command_as_a_user_types_it(tmp_path: Path) -> None:
    """Smoke tests through the real console script; the rest of this file runs main(argv) in-process."""
    medcodec.write(make_volume(1), tmp_path / "scan.nii.gz")
    assert run_cli_process("compress", tmp_path / "scan.nii.gz", "--lossless", "-q").returncode == 0
    proc = run_cli_process("decompress", tmp_path / "scan.mcz", "-o", tmp_path / "back.nrrd")
    assert proc.returncode == 0 and "back.nrrd" in proc.stdout
    assert np.array_equal(medcodec.read(tmp_path / "back.nrrd").array, make_volume(1).array)
    assert "nope" in assert_error(run_cli_process("info", tmp_path / "nope.mcz"), 8)


def test_info_and_help_never_import_torch(tmp_path: Path) -> None:
    data = medcodec.compress(np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32), quality=50)
    assert medcodec.info(data).model_name  # a stream of the learned path: info still needs no network
    (tmp_path / "s.mcz").write_bytes(data)
    code = (
        "import sys\nfrom medcodec import cli\n"
        f"assert cli.main(['info', {str(tmp_path / 's.mcz')!r}]) == 0\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=env, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False"
