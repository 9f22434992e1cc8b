"""Reading the model repository (Triton layout) that ``bnfold-export`` writes: the format is
:mod:`contracts.repository`, the one definition export's writer uses too; this module names what the server
reads from it."""

from __future__ import annotations

from contracts.repository import (
    NAME_RE,
    RepositoryFormatError,
    max_queue_delay_us,
    model_names,
    read_config,
    read_labels,
    versions,
)
from contracts.repository import VERSION_RE as VERSION

__all__ = [
    "NAME_RE",
    "VERSION",
    "RepositoryFormatError",
    "max_queue_delay_us",
    "model_names",
    "read_config",
    "read_labels",
    "versions",
]
