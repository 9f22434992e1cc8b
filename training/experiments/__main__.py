"""``python -m training.experiments``: the same as ``bnfold-experiment``."""

import sys

from training.experiments.cli import main

sys.exit(main())
