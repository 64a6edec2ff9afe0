"""``python -m fxprune.cli``: the same as the ``fxprune-trace`` console script."""
import sys

from . import main

sys.exit(main())
