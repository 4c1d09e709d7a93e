"""Prototype: how much of a level's high bands a predictor can take from its low band.

    PYTHONPATH=src:. python -m benchmarks.crossband_prototype --mode trained [--radius 3] [--hidden 32,32]
    PYTHONPATH=src:. python -m benchmarks.crossband_prototype --mode fitted [--radius 2]

One in-plane level of medcodec's integer CDF 9/7 lifting per slice gives the low band LL and
the high bands HL, LH, HH. A predictor of the three high coefficients at a position from the
(2r + 1)² LL values around it (what a decoder knows before those bands) leaves a residual; the
script prints, per volume, the ratio of a rate proxy, mean log2(1 + |c| / step), of the residual
to that of the coefficients, at three steps (2, 8 and 32 voxel units: about 62, 50 and 38 dB on
a 12-bit CT). Below 1 the predictor would save bits; the proxy leaves the coder's contexts out.

``trained``: a small network (or a linear map with ``--hidden 0``), trained with an L1 loss on
slices of train-split volumes and evaluated on slices of other train-split volumes (what a
shipped, learned cross-band predictor would give). ``fitted``: least squares fitted to each
volume itself (what an encoder could fit per tile and send), at levels 1 and 2.
Results: benchmarks/ATTEMPTS.md, "Learned parts of the transform".
"""

from __future__ import annotations

import argparse

import numpy as np

from medcodec.coding import lifting
from medcodec.files.images import read
from medcodec.training.datasets import find_data_dir

#: (file stem, slices) pairs: trained on the first list, evaluated on the second; ``fitted`` uses both.
TRAIN = [
    ("ct_chest_philips_brilliance16_lungpetctdx_a0001_s2", slice(10, 40)),
    ("mr_head_t1mprage_vsseg001_dicom", slice(30, 60)),
    ("ct_head_toshiba_aquilion_fc63_axial_dicomviewer", slice(5, 25)),
    ("mr_brain_t1_brain1_pyradiomics", slice(None)),
]
HELD_OUT = [
    ("ct_chest_philips_brilliance16_lungpetctdx_a0001_s3", slice(20, 30)),
    ("mr_head_t1mprage_vsseg001_dicom", slice(80, 90)),
    ("ct_head_toshiba_aquilion_fc30bone_axial_dicomviewer", slice(10, 20)),
    ("mr_brain_t1_brain2_pyradiomics", slice(5, 15)),
]
STEPS = (2, 8, 32)
SCALE = 16  # the transform coder's 2**PRECISION_BITS


def _load(stem: str, sl: slice) -> np.ndarray:
    return np.ascontiguousarray(read(find_data_dir() / f"{stem}.nii.gz").array[sl]).astype(np.int64) * SCALE


def _level(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    c = x.copy()
    lifting._split(c, 2)
    lifting._split(c, 1)
    h, w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    return np.ascontiguousarray(c[:, :h, :w]), [c[:, :h, w:], c[:, h:, :w], c[:, h:, w:]]


def _features(ll: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    p = np.pad(ll, [(0, 0), (r, r), (r, r)], mode="edge").astype(np.float64)
    f = [p[:, r + i : r + i + h, r + j : r + j + w] for i in range(-r, r + 1) for j in range(-r, r + 1)]
    return np.stack(f, -1).reshape(-1, (2 * r + 1) ** 2)


def _proxy(y: np.ndarray, step: float) -> float:
    return float(np.log2(1 + np.abs(y) / step).mean())


def _ratios(y: np.ndarray, pred: np.ndarray) -> str:
    return " ".join(f"{_proxy(y - pred, s * SCALE) / _proxy(y, s * SCALE):.3f}" for s in STEPS)


def _pairs(stem: str, sl: slice, r: int) -> tuple[np.ndarray, np.ndarray]:
    ll, highs = _level(_load(stem, sl))
    h, w = (min(b.shape[k] for b in highs) for k in (1, 2))
    y = np.stack([b[:, :h, :w] for b in highs], -1).reshape(-1, 3).astype(np.float64)
    return _features(ll, r, h, w), y


def trained(r: int, hidden: list[int], iterations: int) -> None:
    import torch

    torch.manual_seed(0)
    data = [_pairs(s, sl, r) for s, sl in TRAIN]
    scale = max(float(np.abs(f).max()) for f, _ in data)
    x = torch.from_numpy(np.concatenate([f for f, _ in data]) / scale).float()
    y = torch.from_numpy(np.concatenate([t for _, t in data]) / scale).float()
    centre = (2 * r + 1) ** 2 // 2
    sizes = [(2 * r + 1) ** 2, *hidden, 3]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])

    def predict(f: torch.Tensor) -> torch.Tensor:
        return net((f - f[:, centre : centre + 1]) * 10) / 10  # translation invariant: LL less its centre

    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        idx = torch.randint(0, x.shape[0], (4096,), generator=g)
        loss = (predict(x[idx]) - y[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for stem, sl in HELD_OUT:
            f, t = _pairs(stem, sl, r)
            pred = predict(torch.from_numpy(f / scale).float()).double().numpy() * scale
            print(f"{stem}: residual / coefficients at steps {STEPS}: {_ratios(t, pred)}")


def fitted(r: int) -> None:
    for stem, sl in TRAIN + HELD_OUT:
        ll, out = _load(stem, sl), []
        for level in (1, 2):
            ll, highs = _level(ll)
            for name, band in zip(("HL", "LH", "HH"), highs):
                f, t = _features(ll, r, band.shape[1], band.shape[2]), band.reshape(-1).astype(np.float64)
                w, *_ = np.linalg.lstsq(f, t, rcond=None)
                out.append(f"L{level} {name} {_ratios(t, f @ w)}")
        print(f"{stem}: " + " | ".join(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("trained", "fitted"), required=True)
    p.add_argument("--radius", type=int, default=3)
    p.add_argument("--hidden", default="32,32", help="hidden widths of the trained predictor; 0 for linear")
    p.add_argument("--iterations", type=int, default=3000)
    a = p.parse_args(argv)
    if a.mode == "trained":
        trained(a.radius, [int(h) for h in a.hidden.split(",") if int(h)], a.iterations)
    else:
        fitted(a.radius)


if __name__ == "__main__":
    main()
