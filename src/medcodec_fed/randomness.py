"""Seeds for every random choice of a run, derived from (seed, round, site, purpose).

Deriving each seed from its coordinates, rather than drawing from one generator
that advances as the run goes, is what lets ``--resume`` continue a run exactly:
round 7 draws the same sites, dropouts, patches and noise whether or not rounds
1-6 ran in this process.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Purpose", "derive_seed"]


class Purpose(IntEnum):
    """Stream tags, one per kind of random choice, so no two choices share a stream."""

    SAMPLE = 1
    DROPOUT = 2
    TRAIN = 3
    INIT = 4
    CALIBRATE = 5
    CENTRALIZED = 6
    LOCAL_ONLY = 7
    PARTITION = 8


def derive_seed(seed: int, round_: int, site: int, purpose: int) -> int:
    """A 31-bit seed for one random choice; different coordinates give independent streams."""
    state = np.random.SeedSequence([seed, round_, site, purpose]).generate_state(1, np.uint32)[0]
    return int(state) & 0x7FFFFFFF
