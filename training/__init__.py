"""bnfold's training stage: BatchNorm models, data, the training loop, population statistics, checkpoints.

Everything downstream (``export/``, ``service/``) reads only what this package writes: a checkpoint
directory holding ``model.safetensors`` and ``checkpoint.json``.
"""

from training.errors import BnfoldError

__all__ = ["BnfoldError"]
