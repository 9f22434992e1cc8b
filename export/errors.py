"""Export errors: each names what was wrong and what to do; the CLI prints one line and exits non-zero."""

from training.errors import BnfoldError


class ExportError(BnfoldError):
    """The model or checkpoint cannot be exported as asked (untraceable, no population statistics, ...)."""


class VerificationError(ExportError):
    """The exported model does not reproduce the original within tolerance; nothing was written."""
