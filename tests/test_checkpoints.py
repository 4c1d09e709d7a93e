"""Operator-supplied checkpoints are loaded as plain data: one that would run code is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medcodec.errors import CheckpointError, MedcodecError
from medcodec.model.network import ARCHITECTURES, Autoencoder


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(tmp_path: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    state = Autoencoder(ARCHITECTURES["mc3d-xs"]).state_dict()
    torch.save({"model": state, "arch": "mc3d-xs", "step": 1, "elapsed_s": 0.0, "config": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def _refused(excinfo, path: Path, marker: Path) -> None:
    assert isinstance(excinfo.value, (MedcodecError, ValueError))
    assert str(path) in str(excinfo.value) and "refused" in str(excinfo.value)
    assert "weights_only=False" not in str(excinfo.value)  # torch's advice is not passed on
    assert not marker.exists()


def test_load_checkpoint_refuses_a_file_whose_unpickling_runs_code(tmp_path):
    from medcodec.training.train import load_checkpoint

    path, marker = _hostile(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    _refused(excinfo, path, marker)


def test_the_training_script_does_not_resume_from_a_hostile_checkpoint(tmp_path):
    from medcodec.training.train import TrainConfig, train

    path, marker = _hostile(tmp_path, "checkpoint.pt")
    args = TrainConfig(out=str(tmp_path), arch="mc3d-xs", seed=0, lr=1e-4, threads=1)
    with pytest.raises(CheckpointError) as excinfo:
        train(args)
    _refused(excinfo, path, marker)


def test_the_export_refuses_a_hostile_checkpoint(tmp_path):
    from medcodec.training.export import export_checkpoint

    path, marker = _hostile(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        export_checkpoint(path, tmp_path / "out")
    _refused(excinfo, path, marker)


def test_a_federated_init_checkpoint_that_runs_code_is_refused(tmp_path):
    from medcodec_fed.config import RunConfig
    from medcodec_fed.engine import initial_parameters

    path, marker = _hostile(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        initial_parameters(RunConfig(arch="mc3d-xs", init=str(path)))
    _refused(excinfo, path, marker)


def test_the_checkpoints_training_writes_still_load_and_seed_a_federated_run(tmp_path):
    from medcodec.training.train import TrainConfig, _save, load_checkpoint, make_optimizer
    from medcodec_fed.config import RunConfig
    from medcodec_fed.engine import initial_parameters

    model = Autoencoder(ARCHITECTURES["mc3d-xs"])
    opt = make_optimizer(model, 1e-3)
    args = TrainConfig(out=str(tmp_path), arch="mc3d-xs", steps=10, lr=1e-3)
    _save(tmp_path / "checkpoint.pt", model, opt, 3, 1.5, args)
    blob = load_checkpoint(tmp_path / "checkpoint.pt")
    assert blob["step"] == 3 and blob["config"]["lr"] == 1e-3 and blob["arch"] == "mc3d-xs"
    config = RunConfig(arch="mc3d-xs", init=str(tmp_path / "checkpoint.pt"))
    params = initial_parameters(config)
    want = model.state_dict()
    assert all(np.array_equal(params[k], want[k].numpy()) for k in want)
    torch.save(want, tmp_path / "state.pt")  # a bare state dict works too
    again = initial_parameters(replace(config, init=str(tmp_path / "state.pt")))
    assert all(np.array_equal(v, params[k]) for k, v in again.items())


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    from medcodec_fed.config import RunConfig
    from medcodec_fed.engine import initial_parameters

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        initial_parameters(RunConfig(arch="mc3d-xs", init=str(junk)))
    torch.save({"model": {"x": 1}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="state dict"):
        initial_parameters(RunConfig(arch="mc3d-xs", init=str(tmp_path / "odd.pt")))
    torch.save(Autoencoder(ARCHITECTURES["mc3d-s"]).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="mc3d-xs"):
        initial_parameters(RunConfig(arch="mc3d-xs", init=str(tmp_path / "other.pt")))
