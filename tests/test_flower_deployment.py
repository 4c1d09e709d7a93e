"""The Flower deployment engine on 127.0.0.1: TLS, SuperNode authentication, SecAgg+, a site that disconnects.

Each test starts one ``flower-superlink`` and three ``flower-supernode`` processes (one per
site, each given its own folder of small real volumes through its node config), submits
the medcodec Flower app with ``flwr run``, and waits for the model file: ``flwr run``
exits 0 even when the ServerApp crashed, so the file is the proof. Every process is
started in its own process group and the fixture kills the groups, also when a test fails.
A two-round SecAgg+ run takes about 1.5-2 minutes on a busy two-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from medcodec.files.images import read, write  # noqa: E402
from medcodec.training.datasets import find_data_dir, load_manifest  # noqa: E402
from medcodec.volume import Volume  # noqa: E402
from medcodec_fed import engine, flower, runfolder  # noqa: E402
from medcodec_fed.config import RunConfig  # noqa: E402
from medcodec_fed.sites import Site  # noqa: E402
from tests.test_flower import assert_matches_in_process, secagg_tolerance  # noqa: E402

pytestmark = pytest.mark.flower

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_certificates.sh"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr of this environment
SRC = Path(flower.__file__).resolve().parents[2]  # src/medcodec_fed/flower/__init__.py -> src

CFG = RunConfig(
    arch="mc3d-xs",
    rounds=2,
    local_steps=1,
    batch=2,
    patch=16,
    eval_crop=16,
    calib_patches=2,
    calib_size=16,
    seed=0,
    threads=1,
    plots=False,
)
# Three hospitals: one real training volume of a different site and modality each.
VOLUMES = ("ct_abdomen_totalseg_example.nii.gz", "mr_body_totalseg_example.nii.gz", "mr_brain_bold_niivue.nii.gz")
RUN_TIMEOUT = 420  # seconds for one federated run, a generous bound for a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_site_folders(root: Path) -> list[Path]:
    """One folder per site with two 16x32x32 crops (train, held out) of a real training volume."""
    data = find_data_dir()
    if data is None:
        pytest.skip("real data not found: set MEDCODEC_DATA or place the data at ../shared/data")
    train = {e.path.name: e for e in load_manifest(split="train")}
    folders = []
    for i, name in enumerate(VOLUMES):
        assert name in train, f"{name} is not in the train split"
        vol = read(train[name].path)
        folder = root / f"site{i}"
        folder.mkdir(parents=True)
        z0, y0, x0 = (s // 2 for s in vol.array.shape)
        for k, dy in enumerate((-32, 0)):  # two neighbouring crops: v0 trains, v1 is held out
            crop = vol.array[z0 - 8 : z0 + 8, y0 + dy : y0 + dy + 32, x0 - 16 : x0 + 16]
            write(Volume(np.ascontiguousarray(crop), vol.spacing, vol.origin, vol.direction), folder / f"v{k}.nii.gz")
        folders.append(folder)
    return folders


class Federation:
    """A SuperLink and SuperNodes on 127.0.0.1 with TLS and SuperNode authentication."""

    def __init__(self, root: Path, folders: list[Path]) -> None:
        self.root, self.folders = root, folders
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.creds = root / "creds"
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.port = _free_port()
        self.env = dict(
            os.environ,
            FLWR_HOME=str(self.home),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PYTHONUNBUFFERED="1",
            PYTHONIOENCODING="utf-8",
            LC_ALL="C.UTF-8",
            LANG="C.UTF-8",
        )
        names = [f"site{i}" for i in range(len(folders))]
        nodes = [a for n in names for a in ("--node", n)]
        subprocess.run(
            ["bash", str(SCRIPT), str(self.creds), "--ip", "127.0.0.1", *nodes],
            check=True,
            capture_output=True,
            timeout=60,
        )
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.creds / "ca.crt"}"\n'
        )

    def _start(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as f:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )

    def _flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )

    def start(self) -> None:
        """Start the SuperLink, register every SuperNode's key, start the SuperNodes, wait until all are online."""
        c = self.creds
        self._start(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile",
                str(c / "ca.crt"),
                "--ssl-certfile",
                str(c / "server.pem"),
                "--ssl-keyfile",
                str(c / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        for i in range(len(self.folders)):
            self._until(
                lambda i=i: (
                    self._flwr("supernode", "register", str(c / "supernodes" / f"site{i}.pub"), "test").returncode == 0
                ),
                60,
                f"registering site{i}",
            )
        for i, folder in enumerate(self.folders):
            node_config = f"data-dir='{folder}' site-name='site{i}' partition-id={i}"
            self._start(
                f"site{i}",
                [
                    "flower-supernode",
                    "--root-certificates",
                    str(c / "ca.crt"),
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--auth-supernode-private-key",
                    str(c / "supernodes" / f"site{i}"),
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    node_config,
                ],
            )
        self._until(lambda: self.online() == len(self.folders), 90, "all SuperNodes online")

    def online(self) -> int:
        res = self._flwr("supernode", "list", "test", "--format", "json")
        if res.returncode != 0:
            return -1
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            return -1
        nodes = doc.get("nodes", doc) if isinstance(doc, dict) else doc
        return sum(1 for n in nodes if isinstance(n, dict) and n.get("status") == "online")

    def submit(self, app: Path, overrides: dict) -> None:
        pairs = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in overrides.items()
        )
        res = self._flwr("run", str(app), "test", "--run-config", pairs, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr

    def wait_for_model(self, out: Path, timeout: float = RUN_TIMEOUT) -> dict:
        """metrics.json once it names the model (flwr run's exit code says nothing about the ServerApp)."""

        def done() -> bool:
            path = out / runfolder.METRICS
            return path.is_file() and bool(json.loads(path.read_text()).get("model"))

        self._until(done, timeout, f"a model file in {out}")
        return json.loads((out / runfolder.METRICS).read_text())

    def kill(self, name: str) -> None:
        """A crash: SIGKILL to the process group (the SuperNode, its SuperExec and its ClientApps)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def close(self) -> None:
        """Stop every process group this federation started: SIGTERM, then SIGKILL after 10 s."""
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # also any child left in the group
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)

    def tails(self) -> str:
        return "\n".join(f"--- {n}\n" + p.read_text(errors="replace")[-3000:] for n, p in self.logs.items())

    def _until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None and n == "superlink"]
            assert not dead, f"the SuperLink exited while waiting for {what}\n{self.tails()}"
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tails()}")


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path, make_site_folders(tmp_path / "data"))
    try:
        yield fed
    finally:
        fed.close()  # also when the test failed: no process outlives it
        assert all(p.poll() is not None for p in fed.procs.values())


def _params(out: Path) -> dict[str, np.ndarray]:
    import torch

    return {k: v.numpy() for k, v in torch.load(out / runfolder.CHECKPOINT, weights_only=True)["parameters"].items()}


def test_tls_authenticated_secagg_deployment_matches_the_in_process_engine(federation, tmp_path):
    import medcodec

    out = tmp_path / "flower-run"
    options = flower.FlowerOptions(out=str(out), secagg=True, min_fit_clients=3, min_available_clients=3)
    app = tmp_path / "app"
    flower.write_app(app, CFG, options)
    federation.start()
    t0 = time.monotonic()
    federation.submit(app, {"out": str(out)})
    doc = federation.wait_for_model(out)
    print(f"two SecAgg+ rounds over TLS took {time.monotonic() - t0:.0f} s")

    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    for rec in doc["rounds"]:
        assert rec["accepted"] == ["site0", "site1", "site2"] and rec["secagg"] is True
        assert set(rec["eval"]) == {"site0", "site1", "site2"} and rec["global"]["psnr"] > 0
    model = out / doc["model"]
    assert doc["flower"]["secagg"] is True and doc["engine"].startswith("flower 1.42")

    # The model file is an ordinary codec model: compress and decompress a real test volume with it.
    test_entry = next(e for e in load_manifest(split="test") if e.path.name == "mr_breast_breast1_pyradiomics.nii.gz")
    vol = read(test_entry.path)
    stream = medcodec.compress(vol, quality=50, model=str(model))
    back = medcodec.decompress(stream, model=str(model))
    assert back.array.shape == vol.array.shape and back.array.dtype == vol.array.dtype
    near = medcodec.decompress(medcodec.compress(vol, max_error=2, model=str(model)), model=str(model))
    assert int(np.abs(near.array.astype(np.int64) - vol.array).max()) <= 2

    # The same seed in the in-process engine: the same weights, up to SecAgg+'s quantization.
    sites = [Site.from_folder(f"site{i}", f) for i, f in enumerate(federation.folders)]
    ref = engine.run(sites, replace(CFG, export=False), tmp_path / "in-process", say=lambda _: None)
    assert ref.model is None
    assert_matches_in_process(_params(out), _params(tmp_path / "in-process"), CFG, secagg_tolerance(CFG, options, 3))


def test_a_site_that_disconnects_mid_run_does_not_stop_the_federation(federation, tmp_path):
    out = tmp_path / "flower-run"
    # SecAgg+ stages wait 20 s for a reply, not until the link declares the dead node gone.
    options = flower.FlowerOptions(
        out=str(out), secagg=True, min_fit_clients=2, min_available_clients=2, secagg_timeout=20.0
    )
    app = tmp_path / "app"
    flower.write_app(app, CFG, options)
    federation.start()  # all three online before the run starts: round 1 samples every site
    federation.submit(app, {"out": str(out)})
    # Round 1 has started once site2 receives its first train message (SecAgg+'s setup); then it crashes.
    log = federation.logs["site2"]
    federation._until(lambda: "train message" in log.read_text(errors="replace"), 180, "round 1 to reach site2")
    federation.kill("site2")
    doc = federation.wait_for_model(out)

    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    for rec in doc["rounds"]:  # each round completed with the two others, as the in-process dropout does
        assert rec["accepted"] == ["site0", "site1"] and not rec["kept_previous"]
        assert set(rec["eval"]) == {"site0", "site1"}
    assert (out / doc["model"]).is_file()
    assert federation.procs["site2"].poll() is not None
