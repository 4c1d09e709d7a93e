"""``medcodec-fed`` end to end on two tiny sites."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcodec.files.images import write
from medcodec.volume import Volume
from medcodec_fed.cli import main
from tests.conftest import drawn

TINY = [
    "--arch",
    "mc3d-xs",
    "--local-steps",
    "1",
    "--batch",
    "2",
    "--patch",
    "16",
    "--eval-crop",
    "16",
    "--calib-patches",
    "2",
    "--calib-size",
    "16",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def site_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hospitals")
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[0:16, 0:24, 0:24]
    dirs = []
    for s in ("north", "south"):
        d = root / s
        d.mkdir()
        for k in range(2):
            v = 500 * np.cos(x / (4 + k)) * np.sin(y / 3) + 20 * z + rng.normal(0, 15, x.shape)
            write(Volume(v.astype(np.int16), (0.8, 0.8, 2.5)), d / f"scan{k}.nii.gz")
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def cli_run(site_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    north, south = site_dirs
    argv = [
        "run",
        "--site",
        f"north={north}",
        "--site",
        f"south={south}",
        "--rounds",
        "2",
        "--seed",
        "4",
        "--out",
        str(out),
        "--no-plots",
        *TINY,
    ]
    return out, argv


def test_run_prints_one_line_per_round_and_writes_a_usable_model(cli_run, capsys):
    import medcodec

    out, argv = cli_run
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("round ")] == ["1/2", "2/2"]
    doc = json.loads((out / "metrics.json").read_text())
    model = out / doc["model"]
    assert model.is_file() and model.suffix == ".mcw"
    assert [r["round"] for r in doc["rounds"]] == [1, 2] and set(doc["final"]) == {"north", "south"}
    vol = np.arange(16 * 24 * 24, dtype=np.int16).reshape(16, 24, 24) % 250
    back = medcodec.decompress(medcodec.compress(vol, quality=50, model=str(model)), model=str(model))
    assert back.array.shape == vol.shape


def test_a_toml_config_gives_the_same_model_as_the_command_line(cli_run, site_dirs, tmp_path):
    out, argv = cli_run
    if not (out / "metrics.json").exists():
        assert main(argv) == 0
    north, south = site_dirs
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'out = "{tmp_path / "from-toml"}"\narch = "mc3d-xs"\nrounds = 2\nlocal-steps = 1\nseed = 4\nbatch = 2\n'
        "patch = 16\neval-crop = 16\ncalib-patches = 2\ncalib-size = 16\nthreads = 1\nplots = false\n"
        f'[sites]\nnorth = "{north}"\nsouth = "{south}"\n'
    )
    assert main(["run", "--config", str(toml)]) == 0
    a = json.loads((out / "metrics.json").read_text())["model"]
    b = json.loads((tmp_path / "from-toml" / "metrics.json").read_text())["model"]
    assert a == b
    assert (out / a).read_bytes() == (tmp_path / "from-toml" / b).read_bytes()


def test_plot_redraws_from_metrics(cli_run, capsys):
    out, argv = cli_run
    if not (out / "metrics.json").exists():
        assert main(argv) == 0
    assert main(["plot", str(out)]) == 0
    assert drawn(out / "global_rd.png") and drawn(out / "ratio_per_site.png")


def test_bad_invocations_exit_2(site_dirs, tmp_path, capsys):
    north, south = site_dirs
    assert main(["run", "--site", f"north={north}", "--rounds", "1"]) == 2  # no --out
    assert main(["run", "--site", f"north={north}", "--data", "--out", str(tmp_path / "x")]) == 2
    assert main(["run", "--site", "north", "--out", str(tmp_path / "y")]) == 2
    assert main(["run", "--out", str(tmp_path / "z")]) == 2  # no sites
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 1\nnot-a-setting = 3\n[sites]\nnorth = "x"\n')
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "w")]) == 2
    assert "not-a-setting" in capsys.readouterr().err


def test_an_existing_run_needs_resume(site_dirs, tmp_path, capsys):
    north, south = site_dirs
    argv = [
        "run",
        "--site",
        f"north={north}",
        "--site",
        f"south={south}",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--no-plots",
        "--no-export",
        *TINY,
    ]
    assert main(argv) == 0
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medcodec-fed: error: ") and "Traceback" not in err
    return err


def test_an_unreadable_volume_is_a_one_line_error_and_leaves_no_folder(site_dirs, tmp_path, capsys):
    import shutil

    north, _ = site_dirs
    broken = tmp_path / "broken"
    shutil.copytree(north, broken)
    (broken / "scan1.nii.gz").write_bytes(b"this is not a volume")
    out = tmp_path / "runs" / "fed"
    argv = [
        "run",
        "--site",
        f"north={north}",
        "--site",
        f"broken={broken}",
        "--rounds",
        "1",
        "--out",
        str(out),
        "--no-plots",
        *TINY,
    ]
    assert main(argv) == 8  # medcodec's exit code for a volume that cannot be read
    err = _one_line_error(capsys)
    assert "'broken'" in err and "scan1.nii.gz" in err
    assert not out.exists()


def test_a_wrongly_typed_toml_value_is_a_one_line_error_and_leaves_no_folder(site_dirs, tmp_path, capsys):
    north, _ = site_dirs
    out = tmp_path / "fed"
    toml = tmp_path / "run.toml"
    for line, setting in [
        ('rounds = "abc"', "rounds"),
        ("plots = 1", "plots"),
        ('local-groups = "prior.*"', "local_groups"),
        ("hold-out = 1.5", "hold-out"),
    ]:
        toml.write_text(f'out = "{out}"\n{line}\n[sites]\nnorth = "{north}"\n')
        assert main(["run", "--config", str(toml)]) == 2
        err = _one_line_error(capsys)
        assert setting in err, err
        assert not out.exists()


def test_a_refused_init_checkpoint_is_a_one_line_error_and_leaves_no_folder(site_dirs, tmp_path, capsys):
    import torch

    north, south = site_dirs
    evil = tmp_path / "init.pt"
    torch.save({"model": {}, "x": _Payload(tmp_path / "pwned")}, evil)
    out = tmp_path / "fed"
    argv = [
        "run",
        "--site",
        f"north={north}",
        "--site",
        f"south={south}",
        "--init",
        str(evil),
        "--out",
        str(out),
        *TINY,
    ]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert str(evil) in err and "refused" in err
    assert not out.exists() and not (tmp_path / "pwned").exists()


def test_a_fault_drill_from_the_command_line_is_said_and_recorded(site_dirs, tmp_path, capsys):
    north, south = site_dirs
    argv = [
        "run",
        "--site",
        f"north={north}",
        "--site",
        f"south={south}",
        "--rounds",
        "1",
        "--no-plots",
        "--no-export",
        *TINY,
    ]
    assert main([*argv, "--out", str(tmp_path / "a"), "--drill-hostile", "south=loud"]) == 2
    assert main([*argv, "--out", str(tmp_path / "b"), "--drill-hostile", "west=nan"]) == 2
    err = capsys.readouterr().err
    assert "drill_hostile must map" in err and "unknown sites ['west']" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main([*argv, "--out", str(tmp_path / "c"), "--drill-hostile", "south=nan"]) == 0
    assert "fault drill (south sends 'nan' updates)" in capsys.readouterr().out
    doc = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert doc["drill"]["hostile"] == {"south": "nan"} and doc["rounds"][0]["rejected"][0]["site"] == "south"


def test_tables_writes_a_prior_the_codec_uses_and_counts_each_volume_once(site_dirs, tmp_path, capsys):
    import medcodec
    from medcodec.coding.priors import load_prior

    argv = ["tables", "--site", f"north={site_dirs[0]}", "--site", f"south={site_dirs[1]}", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 sites: north (2 volumes), south (2 volumes)" in out and out.count("counted ") == 4
    (path,) = tmp_path.glob("tables-*.mct")
    assert load_prior(path).meta["sites"] == {"north": 2, "south": 2}
    assert main(argv) == 0  # a rerun reuses the sites' counts and writes the same file
    assert "counted " not in capsys.readouterr().out and list(tmp_path.glob("tables-*.mct")) == [path]
    v = medcodec.read(next(site_dirs[0].glob("*.nii.gz")))
    assert np.array_equal(
        medcodec.decompress(medcodec.compress(v, quality=60, tables=path), tables=path).array,
        medcodec.decompress(medcodec.compress(v, quality=60, tables="none")).array,
    )
    assert main(["tables", "--out", str(tmp_path / "x")]) == 2
    assert main(["tables", "--site", "a", "--out", str(tmp_path / "x")]) == 2
    assert "no sites" in capsys.readouterr().err
