"""Shared fixtures: synthetic volumes and the real data folder (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest

from medcodec.training.datasets import find_data_dir, load_manifest


def synthetic(shape=(6, 40, 36), dtype="int16", seed=0) -> np.ndarray:
    """A smooth volume with edges and noise, scaled to ``dtype``'s usual range."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = (x**2 + y**2 + 0.5 * z**2) < 0.6
    field = 0.5 + 0.3 * np.sin(3 * x + 2 * y) * body + 0.05 * rng.standard_normal(shape)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (field * 1000.0 - 200).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -1024), min(info.max, 3000)
    return np.clip(lo + field * (hi - lo), info.min, info.max).astype(dt)


def drawn(path) -> bool:
    """Whether ``path`` is a PNG that shows something: a readable image of many colours."""
    import matplotlib.image

    image = matplotlib.image.imread(path)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    return image.shape[0] >= 100 and image.shape[1] >= 100 and len(colours) > 16


@pytest.fixture(scope="session")
def test_split():
    """Entries of the real test split; skips when the data folder is not there."""
    if find_data_dir() is None:
        pytest.skip("real data not found: set MEDCODEC_DATA or place the data at ../shared/data")
    return load_manifest(split="test")


def _start_order(item: pytest.Item) -> int:
    """Longest first: the Flower deployments wait on their links' polling, the simulations and the
    real-data checks compute; started first, they overlap the many short tests on the other workers."""
    if item.get_closest_marker("flower") is not None:
        return 0 if "deployment" in item.nodeid else 1
    return 2 if item.get_closest_marker("slow") is not None else 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_order)  # stable: within a group the files' own order
