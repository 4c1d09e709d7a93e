"""medcodec as a chunk codec: for numcodecs (zarr v2, and anything taking a numcodecs codec)
and for zarr v3.

Each chunk becomes one medcodec stream, so a zarr array (an OME-Zarr image, a dask array)
stores its chunks losslessly, within ``max_error``, or at a ``quality``, and every chunk
keeps the stream's checksums. Both classes are registered through entry points, so that::

    numcodecs.get_codec({"id": "medcodec", "max_error": 2})
    zarr.create_array(store, shape=..., chunks=(64, 256, 256), dtype="int16",
                      serializer=MedcodecZarr(max_error=0))

find them once medcodec is installed. A chunk of up to 3 dimensions is coded as a volume
(a 2D chunk as one slice); higher dimensions are folded into z. Options are those of
:func:`medcodec.compress`: one of ``max_error`` and ``quality`` (neither: lossless, the
right default for a store), and ``model``.

Streams carry no geometry or metadata here: those live in the store (zarr attributes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec import compress, decompress
from ..errors import InvalidInputError

__all__ = ["Medcodec", "MedcodecZarr", "CODEC_ID"]

CODEC_ID = "medcodec"


def _options(max_error: float | None, quality: int | None, model: str | None) -> dict[str, Any]:
    if max_error is not None and quality is not None:
        raise InvalidInputError("quality and max_error are mutually exclusive: give one of them")
    if max_error is None and quality is None:
        max_error = 0
    return {"max_error": max_error, "quality": quality, "model": model}


def _as_volume_array(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.ndim == 0:
        return a.reshape(1, 1, 1)
    if a.ndim <= 3:
        return a.reshape((1,) * (3 - a.ndim) + a.shape)
    return a.reshape((-1,) + a.shape[-2:])


def encode_chunk(a: np.ndarray, options: dict[str, Any]) -> bytes:
    """One chunk as a medcodec stream."""
    kwargs = {k: v for k, v in options.items() if v is not None}
    return compress(_as_volume_array(a), **kwargs)


def decode_chunk(data: bytes, shape: tuple[int, ...] | None, model: str | None) -> np.ndarray:
    """The chunk a stream holds, in ``shape`` when given (the chunk's own shape)."""
    a = decompress(bytes(data), model=model).array
    return a.reshape(shape) if shape is not None else a


try:
    from numcodecs.abc import Codec as _NumcodecsCodec
except ImportError:  # numcodecs is optional: the class still works on its own
    _NumcodecsCodec = object  # type: ignore[assignment,misc]


class Medcodec(_NumcodecsCodec):
    """numcodecs codec ``"medcodec"``.

    Args:
        max_error: Every voxel within ±max_error (0: lossless, the default).
        quality: Lossy quality 1-100 instead of a bound.
        model: Model file or name for float chunks coded through the autoencoder.
    """

    codec_id = CODEC_ID

    def __init__(self, max_error: float | None = None, quality: int | None = None, model: str | None = None) -> None:
        self._options = _options(max_error, quality, model)
        self.max_error, self.quality, self.model = max_error, quality, model

    def encode(self, buf: Any) -> bytes:
        return encode_chunk(np.asarray(buf), self._options)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        a = decode_chunk(bytes(memoryview(buf)), None, self.model)
        if out is None:
            return a
        target = np.asarray(out)
        if target.nbytes != a.nbytes:
            raise InvalidInputError(f"output buffer holds {target.nbytes} bytes, the chunk {a.nbytes}")
        target.reshape(-1).view(a.dtype)[:] = a.reshape(-1)
        return out

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        for name in ("max_error", "quality", "model"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"Medcodec({args})"


try:
    from zarr.abc.codec import ArrayBytesCodec as _ArrayBytesCodec
except ImportError:  # zarr is optional
    _ArrayBytesCodec = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class MedcodecZarr(_ArrayBytesCodec):
    """zarr v3 array-to-bytes codec ``"medcodec"`` (the array's serializer).

    Args: as :class:`Medcodec`.
    """

    max_error: float | None = None
    quality: int | None = None
    model: str | None = None
    is_fixed_size = False

    def __post_init__(self) -> None:
        _options(self.max_error, self.quality, self.model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedcodecZarr:
        if data.get("name") != CODEC_ID:
            raise InvalidInputError(f"not a medcodec codec description: {data!r}")
        return cls(**dict(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        config = {k: getattr(self, k) for k in ("max_error", "quality", "model") if getattr(self, k) is not None}
        return {"name": CODEC_ID, "configuration": config}

    async def _decode_single(self, chunk_bytes, chunk_spec):
        a = decode_chunk(chunk_bytes.to_bytes(), tuple(chunk_spec.shape), self.model)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(a)

    async def _encode_single(self, chunk_array, chunk_spec):
        data = encode_chunk(chunk_array.as_numpy_array(), _options(self.max_error, self.quality, self.model))
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError("a medcodec chunk's size depends on its voxels")
