"""Exceptions for user mistakes: each carries a message that says what was wrong and how to fix it.

The CLIs turn a :class:`BnfoldError` into one readable line and a non-zero exit; anything else is a bug
and propagates with its stack.
"""


class BnfoldError(Exception):
    """A mistake in the user's input (a name, a file, a value), with a fix-it message."""


class ConfigError(BnfoldError):
    """An unknown name or an invalid value in the training configuration."""


class DataError(BnfoldError):
    """A dataset that is missing, corrupt or unusable."""


class CheckpointError(BnfoldError):
    """A checkpoint that is missing, corrupt or incompatible with the requested model."""


class TrainingDiverged(BnfoldError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
