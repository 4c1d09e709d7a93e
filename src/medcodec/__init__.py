"""medcodec: a learned, deterministic codec for 3D medical volumes.

Quick start::

    import medcodec
    vol = medcodec.read("scan.nii.gz")
    data = medcodec.compress(vol)                  # lossy, default quality
    data = medcodec.compress(vol, max_error=2)     # every voxel within +-2
    data = medcodec.compress(vol, max_error=0)     # lossless, bit-exact
    out = medcodec.decompress(data)                # a Volume, geometry included
    medcodec.info(data)                            # header only, no decoding
    archive = medcodec.dicom.pack("study/")        # a DICOM study, restored byte for byte
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    CheckpointError,
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
from .files.images import read, write
from .volume import Volume

if TYPE_CHECKING:
    from .codec import DEFAULT_QUALITY, compress, decode, decompress, encode, info
    from .format.container import StreamInfo
    from .model.files import DEFAULT_MODEL, list_models, load_model

# The codec pulls in torch; it is imported on first use so that `medcodec --help`
# and `import medcodec` for I/O alone stay fast (PEP 562).
_LAZY = {
    "DEFAULT_QUALITY": "codec",
    "compress": "codec",
    "decode": "codec",
    "decompress": "codec",
    "encode": "codec",
    "info": "codec",
    "StreamInfo": "format.container",
    "DEFAULT_MODEL": "model.files",
    "list_models": "model.files",
    "load_model": "model.files",
    "codec": None,
    "dicom": None,
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'medcodec' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


def __dir__() -> list[str]:
    # Completion (IPython, Jupyter) lists the lazy names too.
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUALITY",
    "CheckpointError",
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
