"""medcodec: a learned, deterministic codec for 3D medical volumes.

Quick start::

    import medcodec
    vol = medcodec.read("scan.nii.gz")
    data = medcodec.compress(vol)                  # lossy, default quality
    data = medcodec.compress(vol, max_error=2)     # every voxel within +-2
    data = medcodec.compress(vol, max_error=0)     # lossless, bit-exact
    out = medcodec.decompress(data)                # a Volume, geometry included
    medcodec.info(data)                            # header only, no decoding
"""

from __future__ import annotations

from .codec import DEFAULT_QUALITY, compress, decode, decompress, encode, info
from .container import StreamInfo
from .errors import (
    ChecksumError,
    CorruptStreamError,
    InvalidInputError,
    MedcodecError,
    ModelError,
    ModelMismatchError,
    ModelNotFoundError,
    OutputExistsError,
    StreamError,
    TruncatedStreamError,
    UnsupportedVersionError,
    VolumeIOError,
)
from .io import read, write
from .models import DEFAULT_MODEL, list_models, load_model
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUALITY",
    "ChecksumError",
    "CorruptStreamError",
    "InvalidInputError",
    "MedcodecError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "OutputExistsError",
    "StreamError",
    "StreamInfo",
    "TruncatedStreamError",
    "UnsupportedVersionError",
    "Volume",
    "VolumeIOError",
    "compress",
    "decode",
    "decompress",
    "encode",
    "info",
    "list_models",
    "load_model",
    "read",
    "write",
]
