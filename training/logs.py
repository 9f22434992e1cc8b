"""Logging set-up for bnfold's training-side entry points (library modules only get loggers)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """INFO (or DEBUG with ``verbose``) to stderr, one line per record with time, level and logger."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, datefmt="%H:%M:%S")
