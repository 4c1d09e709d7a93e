"""``python -m medcodec.training``: train (or resume) and export the autoencoder, see
:mod:`medcodec.training.train`; ``python -m medcodec.training tables ...`` trains the transform
coder's table prior, see :mod:`medcodec.training.tables`."""

import sys

if sys.argv[1:2] == ["tables"]:
    from .tables import main as tables_main

    tables_main(sys.argv[2:])
else:
    from .train import main

    main()
