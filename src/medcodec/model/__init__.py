"""The learned path's networks: the float architecture (``network``), the integer-exact synthesis
that decoders run (``intnet``) and the model files that ship them (``files``: format, hashing,
registry).

Imports torch; never :mod:`medcodec.training` or :mod:`medcodec_fed` (docs/ARCHITECTURE.md).
"""
