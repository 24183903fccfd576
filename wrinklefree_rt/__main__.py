"""``python -m wrinklefree_rt COMMAND ...``: the ``wrinklefree-rt`` command line."""
import sys

from .cli import main

sys.exit(main())
