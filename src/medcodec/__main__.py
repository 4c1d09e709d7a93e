"""Run the command-line tool as ``python -m medcodec``."""

import sys

from .cli import main

sys.exit(main())
