"""``python -m training``: the same as ``bnfold-train``."""

import sys

from training.cli import main

sys.exit(main())
