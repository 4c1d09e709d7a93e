"""Decoding is bit-reproducible: across thread counts, against golden streams, and exact integer arithmetic."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medcodec
from medcodec.model.files import load_model
from medcodec.model.intnet import ACT_MAX
from tests.conftest import synthetic

DATA = Path(__file__).resolve().parent / "data"
SRC = Path(__file__).resolve().parents[1] / "src"

_DECODE = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[2]))
import medcodec
vol = medcodec.decompress(open(sys.argv[1], 'rb').read())
print(hashlib.sha256(vol.array.tobytes()).hexdigest(), torch.get_num_threads())
"""


@pytest.mark.parametrize("kwargs", [{"quality": 70}, {"max_error": 3}])
def test_decoding_is_identical_with_one_and_two_threads(tmp_path, kwargs):
    path = tmp_path / "s.mcz"
    path.write_bytes(medcodec.compress(synthetic(shape=(20, 96, 80), seed=3), **kwargs))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    results = []
    for threads in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", _DECODE, str(path), str(threads)],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            check=True,
        ).stdout.split()
        assert out[1] == str(threads)
        results.append(out[0])
    assert results[0] == results[1]


def test_golden_streams_decode_to_their_checksums():
    record = json.loads((DATA / "golden.json").read_text())
    model = DATA / record["model"]
    for name, entry in record["streams"].items():
        data = (DATA / entry["file"]).read_bytes()
        vol = medcodec.decompress(data, model=str(model), model_dirs=[DATA])  # 4.1 streams name a prior there
        assert str(vol.array.dtype) == entry["dtype"] and list(vol.array.shape) == entry["shape"], name
        digest = hashlib.sha256(vol.array.astype(vol.array.dtype.newbyteorder("<")).tobytes()).hexdigest()
        assert digest == entry["voxels_sha256"], name


def test_integer_synthesis_matches_a_float64_reference():
    """Each layer's float32 convolution of integers equals float64 exactly (no rounding anywhere)."""
    syn = load_model().synthesis
    rng = np.random.default_rng(0)
    bias0, _, bound = syn.first_layer_params(1 << 16)
    # Latents at the largest magnitude the first layer accepts.
    y = rng.choice([-bound, -1, 0, 1, bound], size=(syn.latent_channels, 3, 9, 8))
    x = torch.from_numpy(y.astype(np.float32))[None]
    w0 = syn._weights[0].double()
    ref0 = F.conv3d(x.double(), w0, torch.from_numpy(bias0.astype(np.float64)), padding=1)
    assert torch.equal(syn._first_conv(x, bias0), ref0.float()), "layer 0"
    for i, layer in enumerate(syn.layers):
        w = syn._weights[i]
        if i:
            bias = torch.from_numpy(layer.bias.astype(np.float32))
            got = F.conv3d(x, w, bias, padding=1)
            ref = F.conv3d(x.double(), w.double(), bias.double(), padding=1)
            assert torch.equal(got.double(), ref), f"layer {i}"
        else:
            got = ref0
        # Feed the next layer worst-case activations to exercise the exactness bound.
        cin = w.shape[0] // (8 if layer.shuffle else 1)
        shape = [s * (2 if layer.shuffle else 1) for s in got.shape[2:]]
        x = torch.from_numpy(rng.integers(0, ACT_MAX + 1, size=(1, cin, *shape)).astype(np.float32))


def test_a_hidden_layer_that_could_leave_the_exact_range_is_refused():
    from dataclasses import replace

    from medcodec.model.intnet import EXACT_LIMIT, IntSynthesis

    layers = list(load_model().synthesis.layers)
    IntSynthesis(layers)  # the shipped layers pass
    i = 1
    worst = ACT_MAX * np.abs(layers[i].weight.astype(np.int64)).reshape(len(layers[i].weight), -1).sum(1)
    # A bias that takes one channel's worst-case sum exactly to the limit: one too many.
    bias = layers[i].bias.copy()
    bias[0] = EXACT_LIMIT - worst[0]
    with pytest.raises(ValueError, match="exact integer range"):
        IntSynthesis([*layers[:i], replace(layers[i], bias=bias), *layers[i + 1 :]])
    bias[0] -= 1  # just inside
    IntSynthesis([*layers[:i], replace(layers[i], bias=bias), *layers[i + 1 :]])


def test_encoding_is_deterministic():
    a = synthetic(shape=(9, 40, 40), seed=5)
    assert medcodec.compress(a, quality=55) == medcodec.compress(a, quality=55)
