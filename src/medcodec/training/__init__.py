"""Training the learned path's networks on real volumes: the trainer (``train``, also
``python -m medcodec.training``), the export of a checkpoint to an integer model file
(``export``) and the project's data folder with its train/test split (``datasets``).

Nothing that decodes imports it (docs/ARCHITECTURE.md).
"""
