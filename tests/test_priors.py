"""Table priors: files with a content identity, training counts that add up, streams that refer
to a prior and decode to the same voxels, clean refusals of a missing, different or undeclared
prior, and the federated engine's messages and sums."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import medcodec
from medcodec.coding import coefficients as cf
from medcodec.coding import lifting, transform
from medcodec.coding.priors import COUNT_TOTAL, NO_PRIOR, TableCounts, list_priors, load_prior, save_prior
from medcodec.errors import CorruptStreamError, ModelError, ModelMismatchError, ModelNotFoundError
from medcodec.files.images import write
from medcodec.format.container import MAGIC, read_stream
from medcodec.format.tile import read_sections
from medcodec.format.tiling import tile_grid
from medcodec.training.tables import count_volumes, stream_counts, volume_counts
from medcodec_fed.messages import MessageError
from medcodec_fed.sites import Site
from medcodec_fed.tables import SiteCounts, aggregate_counts, count_site, federate_tables


def volume(seed: int, shape=(16, 48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    v = 700 * np.exp(-(x**2 + 2 * y**2) * 2) + 50 * np.sin(5 * x + z + seed) + rng.normal(0, 5, shape) - 150
    return v.astype(np.int16)


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory) -> Path:
    counts = volume_counts(volume(1), qualities=(40, 70))
    return save_prior(counts, {"purpose": "tests"}, tmp_path_factory.mktemp("prior"))


def test_counts_add_up_and_survive_their_message_form():
    a, b = TableCounts(), TableCounts()
    rng = np.random.default_rng(0)
    ta, sa = rng.integers(0, 50, (cf.N_BUCKETS, 7)), rng.integers(0, 50, (cf.N_SIGN_CONTEXTS, 2))
    tb, sb = rng.integers(0, 50, (cf.N_BUCKETS, 9)), rng.integers(0, 50, (cf.N_SIGN_CONTEXTS, 2))
    a.add("L0", ta, sa)
    b.add("L0", tb, sb)
    b.add("L1-011", tb, sb)
    a.merge(b)
    assert np.array_equal(a.tokens["L0"][:, :7], ta + tb[:, :7]) and np.array_equal(a.tokens["L0"][:, 7:9], tb[:, 7:])
    assert np.array_equal(a.signs["L1-011"], sb)
    back = TableCounts.from_arrays(a.to_arrays())
    assert back.to_arrays().keys() == a.to_arrays().keys()
    assert all(np.array_equal(v, back.to_arrays()[k]) for k, v in a.to_arrays().items())
    assert back.total() == int(ta.sum() + 2 * tb.sum())


def test_a_prior_file_is_named_by_its_content_and_loads_its_rows(tmp_path, prior_path):
    loaded = load_prior(prior_path)
    again = save_prior(TableCounts.from_arrays(_arrays(loaded)), {"purpose": "tests"}, tmp_path)
    assert loaded.name == prior_path.stem and loaded.sha256.startswith(prior_path.stem.split("-")[1])
    for rows in [*loaded.tokens.values(), *loaded.signs.values()]:
        assert rows.min() >= 1 and rows.max() <= COUNT_TOTAL
    # The same counts give the same bytes; different counts a different name.
    counts = volume_counts(volume(1), qualities=(40, 70))
    assert save_prior(counts, {"purpose": "tests"}, tmp_path).read_bytes() == prior_path.read_bytes()
    assert again.name != prior_path.name


def _arrays(prior) -> dict[str, np.ndarray]:
    out = {}
    for k in prior.tokens:
        out[f"{k}/tokens"], out[f"{k}/signs"] = prior.tokens[k], prior.signs[k]
    return out


def test_damaged_or_missing_prior_files_are_refused(tmp_path, prior_path):
    data = prior_path.read_bytes()
    for name, blob in {"short": data[:-2], "magic": b"X" + data[1:], "empty": b""}.items():
        (tmp_path / f"{name}.mct").write_bytes(blob)
        with pytest.raises(ModelError):
            load_prior(tmp_path / f"{name}.mct")
    zero = bytearray(data)
    zero[-2:] = b"\x00\x00"  # a count of 0 would leave a token without probability
    (tmp_path / "zero.mct").write_bytes(bytes(zero))
    with pytest.raises(ModelError, match="outside"):
        load_prior(tmp_path / "zero.mct")
    with pytest.raises(ModelNotFoundError):
        load_prior(tmp_path / "absent.mct")
    with pytest.raises(ModelNotFoundError, match="unknown table prior"):
        load_prior("no-such-prior")
    assert load_prior(NO_PRIOR) is None


def test_the_package_ships_a_prior_and_lossy_integer_streams_name_it():
    assert list_priors(), "the package ships no table prior"
    data = medcodec.compress(volume(3), quality=50)
    info = medcodec.info(data)
    assert info.format_version == "4.1" and info.model_name == load_prior().name


def test_a_prior_changes_the_bits_never_the_voxels(prior_path):
    v = volume(2)
    for q in (35, 60, 85):
        plain = medcodec.compress(v, quality=q, tables=NO_PRIOR)
        with_prior = medcodec.compress(v, quality=q, tables=prior_path)
        assert medcodec.info(plain).format_version == "4.0" and medcodec.info(plain).model_name == ""
        assert medcodec.info(with_prior).format_version == "4.1"
        assert medcodec.info(with_prior).model_name == prior_path.stem
        a = medcodec.decompress(plain).array
        b = medcodec.decompress(with_prior, tables=prior_path).array
        assert np.array_equal(a, b)
    # The stream took rows from the prior: its tables are not all sent, so they cannot be counted.
    with pytest.raises(CorruptStreamError, match="table prior"):
        stream_counts(with_prior)


def test_a_stream_refuses_a_missing_or_different_prior(tmp_path, prior_path):
    data = medcodec.compress(volume(2), quality=50, tables=prior_path)
    with pytest.raises(ModelNotFoundError, match="table prior"):
        medcodec.decompress(data)
    other = save_prior(volume_counts(volume(4), qualities=(50,)), {}, tmp_path)
    with pytest.raises(ModelMismatchError):
        medcodec.decompress(data, tables=other)
    # Found by name in a folder the caller gives.
    assert medcodec.decompress(data, model_dirs=[prior_path.parent]).array.shape == volume(2).shape


def test_rows_that_refer_to_an_undeclared_prior_are_corrupt(prior_path):
    data = medcodec.compress(volume(2), quality=50, tables=prior_path)
    # A format 4.0 prelude may not name a prior.
    at = len(MAGIC)
    major, minor, size = struct.unpack_from("<HHI", data, at)
    assert (major, minor) == (4, 1)
    patched = bytearray(data)
    struct.pack_into("<HHI", patched, at, 4, 0, size)
    end = at + 8 + size
    struct.pack_into("<I", patched, end, zlib.crc32(bytes(patched[at:end])))
    with pytest.raises(CorruptStreamError, match="4.1"):
        medcodec.decompress(bytes(patched), tables=prior_path)
    # A transform section with prior rows, decoded without a prior.
    header, chunks = read_stream(data)
    tile = next(c.payload for c in chunks if c.kind == b"TILE" and c.payload[4] == 5)
    sections, _ = read_sections(tile, 5)
    shape = tuple(s.stop - s.start for s in tile_grid(header.shape, header.tile)[0])
    with pytest.raises(CorruptStreamError, match="table prior"):
        transform.decode_tile(sections[0], shape, int(header.lo), int(header.hi))


def test_stream_counts_are_the_tables_each_group_sends():
    v = volume(5)
    data = medcodec.compress(v, quality=60, tables=NO_PRIOR)
    counts = stream_counts(data)
    p = lifting.plan(v.shape, 0)
    keys = set(transform.group_keys(p)) | set(transform.group_keys(lifting.plan(v.shape, 2)))
    assert counts.tokens and set(counts.tokens) <= keys
    assert all(t.sum() > 0 for t in counts.tokens.values())
    # Lossless and near-lossless streams have no transform tiles, hence no tables.
    assert not stream_counts(medcodec.compress(v, max_error=0)).tokens


def test_site_messages_are_checked():
    good = {"L0/tokens": np.ones((cf.N_BUCKETS, cf.MAX_TOKENS), np.int64), "L0/signs": np.ones((9, 2), np.int64)}
    SiteCounts("a", 1, good)
    bad = [
        {"voxels/tokens": good["L0/tokens"], "voxels/signs": good["L0/signs"]},
        {"L0/tokens": good["L0/tokens"]},
        {"L0/tokens": -good["L0/tokens"], "L0/signs": good["L0/signs"]},
        {"L0/tokens": good["L0/tokens"][:, :5], "L0/signs": good["L0/signs"]},
        {"L0/tokens": good["L0/tokens"] * 0.5, "L0/signs": good["L0/signs"]},
    ]
    for counts in bad:
        with pytest.raises(MessageError):
            SiteCounts("a", 1, counts)
    with pytest.raises(MessageError, match="twice"):
        aggregate_counts([SiteCounts("a", 1, good), SiteCounts("a", 1, good)])
    with pytest.raises(MessageError):
        aggregate_counts([])


def test_federated_counts_equal_the_pooled_counts(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / "data" / f"v{i}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        write(medcodec.Volume(volume(10 + i, (12, 40, 36))), p)
        paths.append(p)
    sites = [Site("a", (paths[0], paths[1]), (), 0.25), Site("b", (paths[2],), (), 0.25)]
    updates = [count_site(s, tmp_path / s.name) for s in sites]
    assert all(set(u.counts) and all(k.endswith(("/tokens", "/signs")) for k in u.counts) for u in updates)
    pooled = count_volumes(tmp_path / "pooled", paths).to_arrays()
    summed = aggregate_counts(updates).to_arrays()
    assert summed.keys() == pooled.keys() and all(np.array_equal(summed[k], pooled[k]) for k in pooled)
    path = federate_tables(sites, tmp_path / "fed")
    assert load_prior(path).meta["sites"] == {"a": 2, "b": 1}
    v = volume(20, (12, 40, 36))
    data = medcodec.compress(v, quality=55, tables=path)
    assert np.array_equal(
        medcodec.decompress(data, tables=path).array,
        medcodec.decompress(medcodec.compress(v, quality=55, tables=NO_PRIOR)).array,
    )
