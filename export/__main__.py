"""``python -m export``: the same as ``bnfold-export``."""

import sys

from export.cli import main

sys.exit(main())
