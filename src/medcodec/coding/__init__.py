"""The coders of a tile's values, none of which runs a network: the predictive coder of integer
volumes (``predictive`` with its compiled loops in ``wavefront``), the transform coder of lossy
integer volumes (``transform``: ``lifting``, ``coefficients``, ``bandfront``), the symbol streams
they share (``symbols``), and the learned path's latent and residual coding (``entropy``,
``residual``, ``intensity``).

Imports: :mod:`medcodec.format`, numpy, zstandard, constriction; numba in ``wavefront`` only;
never torch (docs/ARCHITECTURE.md).
"""
