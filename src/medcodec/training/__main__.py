"""``python -m medcodec.training``: train (or resume) and export, see :mod:`medcodec.training.train`."""

from .train import main

main()
