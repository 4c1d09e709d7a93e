"""The stream's framing, independent of any coder: the container (header, chunks, checksums),
the tile grid and the fixed-point scales that the header and the coders share.

Imports: numpy, the standard library, :mod:`medcodec.errors` and :mod:`medcodec.volume`; never
torch, numba, SimpleITK or anything above it (docs/ARCHITECTURE.md).
"""
