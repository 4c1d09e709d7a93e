"""The federated experiments (benchmarks/federated*.py) on a tiny synthetic federation (seconds, no real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import federated
from benchmarks.federated_analysis import experiments
from benchmarks.federated_evaluate import evaluation_pairs, stream_sections
from medcodec.volume import center_crop
from tests.conftest import synthetic


def test_center_crop_is_centred_and_clipped():
    a = np.arange(10 * 20 * 30).reshape(10, 20, 30)
    c = center_crop(a, (4, 100, 10))
    assert c.shape == (4, 20, 10)
    assert c[0, 0, 0] == a[3, 0, 10]
    assert c.flags.c_contiguous
    cube = center_crop(a, 8)  # one side for every axis (medcodec_fed's evaluation crops)
    assert cube.shape == (8, 8, 8) and cube[0, 0, 0] == a[1, 6, 11]
    assert center_crop(a, None).shape == a.shape


@pytest.mark.parametrize(
    ("dtype", "options", "path", "sections", "counted_as"),
    [
        ("int16", {"max_error": 0}, 3, 1, "residual"),  # predictive tile
        ("int16", {"quality": 50}, 5, 1, "latents"),  # transform tile
        ("float32", {"quality": 50}, 2, 3, "latents, residual, exceptions"),  # learned tile
        ("float32", {"max_error": 0}, 4, 2, None),  # palette tile: the rest
    ],
)
def test_stream_sections_count_every_section_byte_of_every_tile(dtype, options, path, sections, counted_as):
    import medcodec
    from medcodec.format.container import read_stream

    data = medcodec.compress(synthetic((8, 24, 24), dtype, seed=3), **options)
    tiles = [chunk.payload for chunk in read_stream(data)[1] if chunk.kind == b"TILE"]
    assert {tile[4] for tile in tiles} == {path}
    # docs/FORMAT.md: an 8-byte tile head, then each section behind its 4-byte length, then a 32-byte digest
    section_bytes = sum(len(tile) - 8 - 4 * sections - 32 for tile in tiles)
    parts = stream_sections(data)
    counted = parts["latents"] + parts["residual"] + parts["exceptions"]
    if counted_as is None:
        assert counted == 0 and parts["other"] == len(data)
    elif sections == 1:
        assert parts[counted_as] == counted == section_bytes
    else:
        assert counted == section_bytes and parts["latents"] > 0 and parts["residual"] > 0
    assert parts["other"] == len(data) - counted


def test_evaluation_pairs_skip_a_local_models_own_site():
    vols = {"v1": {"site": "a"}, "v2": {"site": "b"}, "v3": {"site": "c"}}
    models = {"federated": "f", "local-only/a": "la", "local-only/x": "lx"}
    pairs = evaluation_pairs(models, vols)
    assert [v for m, v in pairs if m == "federated"] == ["v1", "v2", "v3"]
    assert [v for m, v in pairs if m == "local-only/a"] == ["v2", "v3"]
    assert [v for m, v in pairs if m == "local-only/x"] == ["v1", "v2", "v3"]


def _curve(scale, latents=10):
    return {
        str(q): {"bpv": scale * 2.0 ** (q / 20), "psnr": 20 + q / 2, "bytes": 1000, "parts": {"latents": latents}}
        for q in (20, 40, 60, 80)
    }


def test_experiments_signs_and_targets():
    vols = {"v1": {"site": "a"}, "v2": {"site": "b"}}
    points = {
        "centralized": {v: _curve(1.0) for v in vols},
        "federated": {v: _curve(1.02, latents=200) for v in vols},  # 2 % more bits everywhere, 20 % latents
        "federated-dropout": {v: _curve(1.02 * 1.10) for v in vols},  # 10 % more than federated
        "local-only/a": {"v2": _curve(1.5)},  # federated is better on b's volume
        "local-only/b": {"v1": _curve(1.0)},  # federated is worse on a's volume
    }
    ex = experiments(points, vols, ["a", "b"])
    assert ex["federated_vs_centralized"]["mean"] == pytest.approx(2.0, abs=1e-6)
    assert ex["federated_vs_centralized"]["holds"]
    assert ex["dropout_vs_no_dropout"]["mean"] == pytest.approx(10.0, abs=1e-6)
    assert not ex["dropout_vs_no_dropout"]["holds"]
    e2 = ex["federated_vs_local_only"]
    assert e2["per_site"]["a"]["mean"] == pytest.approx((1.02 / 1.5 - 1) * 100, abs=1e-6)
    assert e2["sites_where_federated_better"] == ["a"]
    assert not e2["holds"]
    # without its latents a federated stream keeps 80 % of its rate, a centralized one 99 %
    without_latents = ex["bd_rate_without_latents"]
    assert without_latents["federated_vs_centralized"] == pytest.approx((1.02 * 0.8 / 0.99 - 1) * 100, abs=1e-6)
    assert without_latents["federated_vs_local_only"]["a"] == pytest.approx((1.02 * 0.8 / (1.5 * 0.99) - 1) * 100)


def test_end_to_end_on_a_tiny_synthetic_federation(tmp_path):
    pytest.importorskip("SimpleITK")
    from medcodec.files.images import write

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    layout = [("train", "a", 2), ("train", "b", 2), ("test", "a", 1), ("test", "b", 1)]
    seed = 0
    for split, site, n in layout:
        for i in range(n):
            seed += 1
            name = f"{split}_{site}_{i}.nii.gz"
            arr = synthetic((12, 40, 36), "int16", seed=seed)
            write(arr, data / name)
            rows.append(
                {
                    "file": name,
                    "split": split,
                    "site": site,
                    "modality": "CT",
                    "dtype": "int16",
                    "shape_zyx": list(arr.shape),
                }
            )
    (data / "manifest.json").write_text(json.dumps(rows))
    out, md = tmp_path / "run", tmp_path / "RESULTS.md"
    args = [
        "--out",
        str(out),
        "--data",
        str(data),
        "--results",
        str(md),
        "--rounds",
        "1",
        "--local-steps",
        "2",
        "--batch",
        "1",
        "--patch",
        "16",
        "--eval-crop",
        "16",
        "--calib-patches",
        "1",
        "--calib-size",
        "16",
        "--qualities",
        "20,60,80",
        "--crop",
        "8x24x24",
    ]
    assert federated.main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["models"]) == {
        "federated",
        "federated-dropout",
        "centralized",
        "local-only/a",
        "local-only/b",
        "federated-seed-b",
        "centralized-seed-b",
    }
    assert doc["models"]["federated"] != doc["models"]["federated-seed-b"]
    assert set(doc["experiments"]["seed_variation"]) == {
        "federated_seed_a_vs_b",
        "centralized_seed_a_vs_b",
        "federated_vs_centralized_seed_b",
    }
    assert doc["budget"]["federated_site_steps"] == doc["budget"]["centralized_steps"] == 2 * 1 * 2
    assert doc["budget"]["local_only_steps"] == {"a": 2, "b": 2}
    assert set(doc["points"]["local-only/a"]) == {"test_b_0"}  # only the other site's volume
    assert doc["test_volumes"]["test_a_0"]["cropped_shape"] == [8, 24, 24]
    for by_vol in doc["points"].values():
        for by_q in by_vol.values():
            for q, p in by_q.items():
                assert p["psnr"] is None or p["psnr"] >= 20 + int(q) / 2 - 1e-6  # the codec's guarantee
                assert min(p["parts"].values()) >= 0 and 0 < p["parts"]["other"] < p["bytes"]
                assert 0 < p["pred_psnr"] < 100  # one tile per crop: the prediction is always measured
    assert set(doc["experiments"]) == {
        "federated_vs_centralized",
        "federated_vs_local_only",
        "dropout_vs_no_dropout",
        "seed_variation",
        "prediction_psnr_gaps",
        "bd_rate_without_latents",
    }
    text = md.read_text()
    assert "central crop of at most 8×24×24" in text and "python -m benchmarks.federated" in text
    # a second invocation with --resume reuses everything (no retraining, no re-measuring)
    cache = (out / "codec_cache.json").read_text()
    assert federated.main([*args, "--resume"]) == 0
    assert (out / "codec_cache.json").read_text() == cache
    assert len(json.loads((out / "invocations.json").read_text())) == 2
