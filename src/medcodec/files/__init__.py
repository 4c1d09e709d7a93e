"""Volumes in and out of files and stores: image files through SimpleITK (``images``), atomic
writes (``atomic``), volumes larger than memory (``large``), zarr chunk stores (``zarr_codec``)
and which metadata identify a patient (``privacy``).

SimpleITK only in ``images``, zarr and numcodecs only in ``zarr_codec``; torch never at import
time (docs/ARCHITECTURE.md).
"""
