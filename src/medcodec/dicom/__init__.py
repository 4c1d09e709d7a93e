"""DICOM in, DICOM out: a study folder as one archive, and its files restored byte for byte.

Quick start::

    from medcodec import dicom
    data = dicom.pack("study/")              # lossless: every file comes back as it was
    dicom.unpack(data, "restored/")          # the same files, at the same relative paths
    dicom.info(data)                         # series, file counts and sizes, no decoding
    data = dicom.pack("study/", max_error=2) # lossy: new DICOM files on unpack (see below)

Each file that holds one uncompressed monochrome frame (implicit or explicit VR little
endian, 8 or 16 bits allocated, signed or not) is an *image*: its pixel bytes become a slice
of its series' volume, coded by :func:`medcodec.compress`, and its other bytes (preamble, file
meta, every element before and after Pixel Data, padding) are compressed together with the
other images' in one zstandard frame. Every other file (not DICOM, damaged, compressed
transfer syntaxes, colour, multi-frame, objects without pixels) is stored whole. The layout
is in docs/DICOM.md; it needs pydicom (``pip install medcodec[dicom]``) to pack and to write
lossy files, not to restore a lossless archive.

With ``quality`` or ``max_error`` the pixels are coded within the mode's bound, and
:func:`unpack` writes each image as a new DICOM file: the decoded pixels, Lossy Image
Compression (0028,2110) "01", its ratio (0028,2112) and method (0028,2114) "MEDCODEC", and a
new SOP Instance UID (also in the file meta), derived from the old one, so the output is
deterministic. Everything else is kept.

``study`` reads and writes DICOM files (pydicom, imported inside its functions); ``archive`` is
the archive's byte layout and restores a lossless archive without pydicom
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from .study import ARCHIVE_SUFFIX, LOSSY_METHOD, info, is_archive, pack, pack_files, restore, unpack

__all__ = ["pack", "pack_files", "unpack", "restore", "info", "is_archive", "ARCHIVE_SUFFIX", "LOSSY_METHOD"]
