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

The federated-training experiments (``python -m benchmarks.federated``, FEDERATED_RESULTS.md)
are split the same way:
    federated_train: the federated runs and the centralized / local-only baselines.
    federated_evaluate: coding the test volumes with each model through the public codec.
    federated_analysis: the BD-rate comparisons (vs centralized, vs local-only, dropout).
    federated_report: ``FEDERATED_RESULTS.md``.
    federated: the command line and ``results.json``.
    json_files: the run folder's JSON records, written atomically.
"""
