"""medcodec as a chunk codec: numcodecs' registry, zarr v2 and v3 arrays, dask reads; real libraries, no mocks."""

from __future__ import annotations

import numpy as np
import pytest

numcodecs = pytest.importorskip("numcodecs")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

import medcodec  # noqa: E402
from medcodec.files.zarr_codec import Medcodec, MedcodecZarr  # noqa: E402
from tests.conftest import synthetic  # noqa: E402


@pytest.fixture
def volume() -> np.ndarray:
    return synthetic(shape=(20, 40, 36)).astype(np.int16)


def test_numcodecs_finds_the_codec_by_its_id_and_keeps_the_bound(volume):
    codec = numcodecs.get_codec({"id": "medcodec", "max_error": 2})
    assert isinstance(codec, Medcodec) and codec.get_config() == {"id": "medcodec", "max_error": 2}
    back = codec.decode(codec.encode(volume))
    assert np.abs(back.astype(np.int64).reshape(volume.shape) - volume).max() <= 2
    out = np.empty_like(volume)
    codec.decode(numcodecs.get_codec({"id": "medcodec"}).encode(volume), out=out)
    assert np.array_equal(out, volume)  # no option: lossless


@pytest.mark.parametrize("bound", [0, 2])
def test_a_zarr_v3_array_stores_its_chunks_with_medcodec_and_reopens(tmp_path, volume, bound):
    store = zarr.storage.LocalStore(tmp_path / "v.zarr")
    z = zarr.create_array(
        store,
        shape=volume.shape,
        chunks=(12, 24, 20),
        dtype="int16",
        serializer=MedcodecZarr(max_error=bound),
        compressors=None,
    )
    z[:] = volume
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "v.zarr"), mode="r")
    assert back.metadata.to_dict()["codecs"][0] == {"name": "medcodec", "configuration": {"max_error": bound}}
    region = back[3:13, 5:30, 17:23]  # across chunk boundaries, and partial edge chunks
    assert np.abs(region.astype(np.int64) - volume[3:13, 5:30, 17:23]).max() <= bound
    chunk = next((tmp_path / "v.zarr").rglob("c/0/0/0"))
    assert medcodec.info(chunk.read_bytes()).shape == (12, 24, 20)  # each chunk is a medcodec stream
    assert float(da.from_zarr(back).astype("int64").sum().compute()) == pytest.approx(
        float(volume.sum()), abs=bound * volume.size
    )


def test_a_zarr_v2_array_takes_the_numcodecs_codec_as_its_compressor(volume):
    store = zarr.storage.MemoryStore()
    z = zarr.create_array(
        store,
        shape=volume.shape,
        chunks=(20, 20, 20),
        dtype="int16",
        zarr_format=2,
        compressors=Medcodec(max_error=1),
        filters=None,
    )
    z[:] = volume
    assert np.abs(zarr.open_array(store, mode="r")[:].astype(np.int64) - volume).max() <= 1


def test_conflicting_options_are_refused():
    with pytest.raises(medcodec.InvalidInputError, match="mutually exclusive"):
        Medcodec(max_error=1, quality=50)
    with pytest.raises(medcodec.InvalidInputError, match="mutually exclusive"):
        MedcodecZarr(max_error=1, quality=50)


def test_a_region_read_through_a_dask_cluster_equals_the_original(tmp_path, volume):
    distributed = pytest.importorskip("distributed")
    z = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "v.zarr"),
        shape=volume.shape,
        chunks=(10, 20, 18),
        dtype="int16",
        serializer=MedcodecZarr(),
        compressors=None,
    )
    z[:] = volume
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster):
            arr = da.from_zarr(str(tmp_path / "v.zarr"))
            assert np.array_equal(arr[4:17, 9:33, 5:30].compute(), volume[4:17, 9:33, 5:30])
