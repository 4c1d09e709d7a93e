"""Exception hierarchy of medcodec.

Every error medcodec raises on purpose derives from :class:`MedcodecError`, and
also from the builtin a caller would naturally catch (``ValueError`` for a bad
stream or argument, ``LookupError`` for a missing model, ``OSError`` for I/O).
Each class carries the exit code the command-line tool uses for it (:data:`EXIT_CODES`).
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "MedcodecError",
    "InvalidInputError",
    "StreamError",
    "TruncatedStreamError",
    "CorruptStreamError",
    "UnsupportedVersionError",
    "ChecksumError",
    "ModelError",
    "ModelNotFoundError",
    "ModelMismatchError",
    "CheckpointError",
    "VolumeIOError",
    "OutputExistsError",
    "MissingExtraError",
]


#: The command line's exit codes and what each means (``medcodec --help`` prints this table).
EXIT_CODES = {
    0: "success",
    1: "unexpected internal error",
    2: "invalid input or options (usage error, unsupported dtype, ...)",
    3: "truncated stream",
    4: "corrupt stream or checksum mismatch",
    5: "unsupported format version",
    6: "model not found",
    7: "model mismatch (same name, different SHA-256)",
    8: "volume or file I/O error (missing input, unreadable, unwritable)",
    9: "output exists (use --force)",
    130: "interrupted (Ctrl-C)",
}


class MedcodecError(Exception):
    """Base class of every error medcodec raises on purpose."""

    exit_code: int = 1


class InvalidInputError(MedcodecError, ValueError):
    """An argument or a volume that medcodec cannot encode (bad dtype, shape, option)."""

    exit_code = 2


class StreamError(MedcodecError, ValueError):
    """A compressed stream that cannot be decoded."""

    exit_code = 3


class TruncatedStreamError(StreamError):
    """The stream ends before a structure it announces."""

    exit_code = 3


class CorruptStreamError(StreamError):
    """A structure of the stream is malformed or fails its checksum."""

    exit_code = 4


class UnsupportedVersionError(StreamError):
    """The stream's format version is newer than this decoder, or unknown."""

    exit_code = 5


class ChecksumError(CorruptStreamError):
    """The decoded voxels do not match the checksum recorded by the encoder."""

    exit_code = 4


class ModelError(MedcodecError, LookupError):
    """A problem with a codec model (weights file)."""

    exit_code = 6


class ModelNotFoundError(ModelError):
    """The model named by the caller or by a stream is not available."""

    exit_code = 6


class ModelMismatchError(ModelError):
    """A model with the stream's name exists but its SHA-256 differs."""

    exit_code = 7


class CheckpointError(MedcodecError, ValueError):
    """A training checkpoint or state dict that is malformed or holds more than plain data.

    Checkpoints are loaded with ``torch.load(weights_only=True)``; a file that needs
    anything else (a pickled object, whose unpickling could run code) is refused.
    """

    exit_code = 2


class VolumeIOError(MedcodecError, OSError):
    """A volume file or DICOM series could not be read or written."""

    exit_code = 8


class OutputExistsError(VolumeIOError, FileExistsError):
    """The output file exists and overwriting was not asked for."""

    exit_code = 9


class MissingExtraError(MedcodecError, ImportError):
    """A feature needs an optional dependency that is not installed (the message names the extra)."""

    exit_code = 2
