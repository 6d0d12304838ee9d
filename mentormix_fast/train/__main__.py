"""``python -m mentormix_fast.train``: the trainer's command line (:func:`mentormix_fast.train.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
