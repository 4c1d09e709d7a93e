"""Benchmark harness: medcodec against the standard codecs on the same volumes.

Run everything with ``python -m benchmarks.run`` (see ``benchmarks/README.md``).

Modules:
    volumes: the volumes under test (loading, modality, cropping).
    codecs: adapters that give every codec one shape (``encode`` / ``decode``) and the
        default settings swept for each.
    metrics: rate, distortion, speed and peak-memory measures.
    measure: one codec setting on one volume -> one :class:`~benchmarks.measure.Record`.
    bdrate: Bjøntegaard delta rate and rate-at-PSNR interpolation.
    report: ``RESULTS.md`` tables.
    figures: PNG plots (rate-distortion curves, slice panels).
    run: the command line.
"""
