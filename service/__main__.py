"""``python -m service``: the same as ``bnfold-serve``."""

import sys

from service.cli import main

sys.exit(main())
