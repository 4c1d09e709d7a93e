"""Sites: from folders, from the manifest, Dirichlet non-IID splits, loading."""

from __future__ import annotations

import numpy as np
import pytest

from medcodec.files.images import write
from medcodec.training.datasets import find_data_dir
from medcodec.volume import Volume
from medcodec_fed.sites import Site, dirichlet_partition, held_out_volumes, list_volumes, load_site, sites_from_manifest


def _write(path, shape=(16, 24, 24), offset=0):
    a = (np.arange(np.prod(shape)).reshape(shape) % 97 + offset).astype(np.int16)
    write(Volume(a), path)
    return a


def test_from_folder_holds_back_the_last_volume(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "c.mha"):
        _write(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a volume")
    site = Site.from_folder("h1", tmp_path)
    assert [p.name for p in site.train] == ["a.nrrd", "b.nii.gz"]
    assert [p.name for p in site.held_out] == ["c.mha"]
    assert [p.name for p in list_volumes(tmp_path)] == ["a.nrrd", "b.nii.gz", "c.mha"]


def test_a_single_volume_site_holds_back_its_last_slices(tmp_path):
    a = _write(tmp_path / "only.nii.gz", shape=(16, 24, 24))
    site = Site.from_folder("solo", tmp_path)
    assert site.held_out == () and 0 < site.holdout_fraction < 1
    data = load_site(site, eval_crop=64)
    (back,) = held_out_volumes(site)
    assert data.train[0].shape[0] + back.array.shape[0] == 16
    np.testing.assert_array_equal(back.array, a[data.train[0].shape[0] :])
    assert data.eval_crops[0].shape == back.array.shape


def test_load_site_normalizes_and_crops(tmp_path):
    _write(tmp_path / "a.nii.gz", shape=(16, 40, 40))
    _write(tmp_path / "b.nii.gz", shape=(16, 40, 40), offset=5)
    data = load_site(Site.from_folder("s", tmp_path), eval_crop=16)
    assert data.train[0].dtype == np.float32
    assert data.train[0].min() == -1.0 and data.train[0].max() == 1.0
    assert data.eval_crops[0].shape == (16, 16, 16)


def test_empty_or_missing_folders_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        Site.from_folder("x", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        Site.from_folder("x", tmp_path)


def test_dirichlet_partition_is_complete_non_empty_and_reproducible():
    labels = ["ct"] * 10 + ["mr"] * 8 + ["pet"] * 2
    parts = dirichlet_partition(labels, 4, alpha=0.3, seed=7)
    assert sorted(i for p in parts for i in p) == list(range(20))
    assert all(parts)
    assert parts == dirichlet_partition(labels, 4, alpha=0.3, seed=7)
    assert parts != dirichlet_partition(labels, 4, alpha=0.3, seed=8)


def test_small_alpha_is_less_mixed_than_large_alpha():
    labels = [str(i % 5) for i in range(200)]

    def mixing(alpha):  # mean number of labels per site
        parts = dirichlet_partition(labels, 5, alpha=alpha, seed=1)
        return np.mean([len({labels[i] for i in p}) for p in parts])

    assert mixing(0.05) < mixing(100.0)


def test_dirichlet_partition_refuses_impossible_splits():
    with pytest.raises(ValueError):
        dirichlet_partition(["a"], 2, 1.0, 0)
    with pytest.raises(ValueError):
        dirichlet_partition(["a", "b"], 2, 0.0, 0)


@pytest.mark.skipif(find_data_dir() is None, reason="no ../shared/data (set MEDCODEC_DATA)")
def test_manifest_sites_are_the_train_split_grouped_by_site():
    from medcodec.training.datasets import load_manifest

    sites = sites_from_manifest()
    train = load_manifest(split="train")
    assert {s.name for s in sites} == {e.site for e in train}
    paths = [p for s in sites for p in (*s.train, *s.held_out)]
    assert sorted(paths) == sorted(e.path for e in train)  # every train volume once, no test volume
    assert all(s.held_out for s in sites if len(s.train) + len(s.held_out) >= 2)
