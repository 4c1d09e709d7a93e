"""Symbol streams shared by the coders: frequency tables, raw bits and one ANS stream per section.

A coder appends its symbols to a :class:`Writer` in the order its decoder reads them; the
writer encodes them in reverse, as the ANS stack needs. Frequency tables are sent as integer
counts (:func:`normalized`), so encoder and decoder build the same models from the same integers.
"""

from __future__ import annotations

import constriction
import numpy as np

__all__ = ["Writer", "UNIFORM", "models", "normalized", "raw_parts", "COUNT_TOTAL"]

#: Token frequencies are sent with this much precision per table: enough for the coder, cheap to send.
COUNT_TOTAL = 1 << 14
UNIFORM = constriction.stream.model.Uniform()


class Writer:
    """Collects symbols in decoding order, in compact types; encodes them in reverse.

    An item is ``(symbols, model, None)`` or, for raw bits, ``(values, UNIFORM, bit counts)``.
    """

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, object, np.ndarray | None]] = []

    def words(self) -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        for sym, model, bits in reversed(self.items):
            if bits is None:
                coder.encode_reverse(sym.astype(np.int32), model)
            else:
                coder.encode_reverse(sym.astype(np.int32), model, np.left_shift(1, bits, dtype=np.int32))
        return coder.get_compressed()


def models(counts: np.ndarray) -> list:
    """One categorical model per row of counts (None for an empty row)."""
    return [
        constriction.stream.model.Categorical(c.astype(np.float64), perfect=False) if c.sum() else None for c in counts
    ]


def normalized(counts: np.ndarray) -> np.ndarray:
    """Rows of counts scaled to sum about COUNT_TOTAL (rows already below stay exact; nonzero stays nonzero)."""
    total = counts.sum(axis=1, keepdims=True)
    scaled = np.where(counts > 0, np.maximum(1, (counts * COUNT_TOTAL + total // 2) // np.maximum(total, 1)), 0)
    return np.where(total <= COUNT_TOTAL, counts, scaled)


def raw_parts(nraw: np.ndarray, raw: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw bits as uniform symbols of at most 16 bits: (values, bit counts), low part first."""
    m = nraw > 0
    lo_bits = np.minimum(nraw[m], 16)
    parts = [((raw[m] & ((1 << lo_bits) - 1)).astype(np.uint16), lo_bits.astype(np.uint8))]
    hi_n = nraw[m] - 16
    mh = hi_n > 0
    parts.append(((raw[m][mh] >> 16).astype(np.uint16), np.minimum(hi_n[mh], 16).astype(np.uint8)))
    return parts
