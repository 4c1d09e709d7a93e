"""The float 3D autoencoder used for training and for encoding.

The analysis transform ``g_a`` maps a normalized volume (values in [-1, 1]) to
latents at 1/8 resolution; the synthesis transform ``g_s`` maps them back.
``g_s`` is built only from convolutions, ReLUs and 3D pixel shuffles so that it
can be converted to the integer-exact network of :mod:`medcodec.model.intnet`, which
is what decoding actually runs. The factorized entropy model supplies the rate
term during training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Architecture", "ARCHITECTURES", "Autoencoder", "FactorizedPrior", "pixel_shuffle3d"]


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters that define a network; registered by name in :data:`ARCHITECTURES`.

    Attributes:
        name: Registry name, recorded in model files.
        latent: Latent channels.
        analysis: Channels of the three stride-2 analysis stages.
        synthesis: Channels at 1/8, 1/4 and 1/2 resolution in the synthesis transform.
    """

    name: str
    latent: int = 192
    analysis: tuple[int, int, int] = (16, 32, 48)
    synthesis: tuple[int, int, int] = (48, 24, 8)

    def to_dict(self) -> dict:
        return asdict(self)


ARCHITECTURES: dict[str, Architecture] = {
    "mc3d-s": Architecture("mc3d-s"),
    # A tiny variant for tests and quick federated runs.
    "mc3d-xs": Architecture("mc3d-xs", latent=8, analysis=(8, 16, 16), synthesis=(16, 8, 4)),
}


def pixel_shuffle3d(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Rearrange (N, C*r^3, D, H, W) into (N, C, D*r, H*r, W*r)."""
    n, c, d, h, w = x.shape
    oc = c // (r**3)
    x = x.reshape(n, oc, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(n, oc, d * r, h * r, w * r)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2)


class SynthesisLayer(nn.Module):
    """One synthesis step: 3x3x3 convolution, optional 2x pixel shuffle, optional ReLU."""

    def __init__(self, cin: int, cout: int, *, shuffle: bool, relu: bool) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.relu = relu
        self.conv = _conv(cin, cout * (8 if shuffle else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.shuffle:
            x = pixel_shuffle3d(x)
        return F.relu(x) if self.relu else x


class Autoencoder(nn.Module):
    """Analysis and synthesis transforms of one :class:`Architecture`."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        a0, a1, a2 = arch.analysis
        s0, s1, s2 = arch.synthesis
        self.g_a = nn.Sequential(
            _conv(1, a0, 5, 2),
            nn.LeakyReLU(0.1),
            _conv(a0, a1, 3, 2),
            nn.LeakyReLU(0.1),
            _conv(a1, a2, 3, 2),
            nn.LeakyReLU(0.1),
            _conv(a2, arch.latent, 3, 1),
        )
        # Few channels where resolution is high: the full-resolution output comes from a
        # pixel shuffle of a half-resolution layer, which keeps decoding fast on CPUs.
        self.g_s = nn.Sequential(
            SynthesisLayer(arch.latent, s0, shuffle=False, relu=True),
            SynthesisLayer(s0, s1, shuffle=True, relu=True),
            SynthesisLayer(s1, s2, shuffle=True, relu=True),
            SynthesisLayer(s2, 1, shuffle=True, relu=False),
        )
        self.prior = FactorizedPrior(arch.latent)

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: reconstruction and latent likelihoods at quantization ``1 / gain``.

        Args:
            x: Normalized patches (N, 1, D, H, W), each side a multiple of 8.
            gain: Per-sample latent gain (N,); latents are rounded after scaling by it.
        """
        g = gain.view(-1, 1, 1, 1, 1)
        y = self.g_a(x) * g
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_round = y + (torch.round(y) - y).detach()
        likelihood = self.prior.likelihood(y_noisy, g)
        return self.g_s(y_round / g), likelihood


class FactorizedPrior(nn.Module):
    """A per-channel non-parametric density (Balle et al., 2018), used for the rate term.

    The density models the unscaled latent ``y``; at gain ``g`` the symbol ``k``
    covers the interval ``[(k - 0.5) / g, (k + 0.5) / g]``.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = torch.log(torch.expm1(torch.tensor(1.0 / scale / dims[i + 1])))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), float(init))))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        # v: (C, 1, M)
        for i, matrix in enumerate(self.matrices):
            v = torch.matmul(F.softplus(matrix), v) + self.biases[i]
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, y_scaled: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """Probability mass of each (noisy or rounded) scaled latent, same shape as ``y_scaled``."""
        n, c = y_scaled.shape[:2]
        g = gain.expand_as(y_scaled)
        lower = ((y_scaled - 0.5) / g).transpose(0, 1).reshape(c, 1, -1)
        upper = ((y_scaled + 0.5) / g).transpose(0, 1).reshape(c, 1, -1)
        lo = self._logits_cdf(lower)
        up = self._logits_cdf(upper)
        sign = -torch.sign(lo + up).detach()
        p = torch.abs(torch.sigmoid(sign * up) - torch.sigmoid(sign * lo))
        p = p.reshape(c, n, *y_scaled.shape[2:]).transpose(0, 1)
        return torch.clamp(p, min=1e-9)
