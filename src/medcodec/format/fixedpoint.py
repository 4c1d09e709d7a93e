"""Fixed-point scales shared by the integer decoder network, the intensity map and the codec.

They live apart from :mod:`medcodec.model.intnet` so that paths without a network (the predictive
coder, raw floats, ``info``) never import torch.
"""

from __future__ import annotations

__all__ = ["OUT_FRAC_BITS", "GAIN_ONE"]

#: Fractional bits of the synthesis network's output: one unit is 2**-OUT_FRAC_BITS of the
#: normalized intensity (range [-1, 1]).
OUT_FRAC_BITS = 12
#: The latent gain 1.0 as the integer a stream records (``gain * 2**16``).
GAIN_ONE = 1 << 16
