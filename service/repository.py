"""Reading the model repository (Triton layout) that ``bnfold-export`` writes: the format is
:mod:`contracts.repository`, the one definition export's writer uses too; this module names what the server
reads from it."""

from __future__ import annotations

from contracts.repository import VERSION_RE as VERSION
from contracts.repository import (
    RepositoryFormatError,
    max_queue_delay_us,
    model_names,
    read_config,
    read_labels,
    versions,
)

__all__ = [
    "VERSION",
    "RepositoryFormatError",
    "max_queue_delay_us",
    "model_names",
    "read_config",
    "read_labels",
    "versions",
]
