"""Model registry: ``build_model(name, **options)`` builds any bnfold network by name.

Every model takes the common options ``batch_norm``, ``activation``, ``num_classes``, ``in_channels`` and
``image_size`` and expects NCHW float input. A conv or linear layer followed by BN has no bias: BN's
beta subsumes it (Ioffe & Szegedy, 2015, section 3.2).
"""

from training.models import convnet, mlp, resnet  # noqa: F401  (registers the models)
from training.models.registry import MODEL_NAMES, build_model, register_model

__all__ = ["MODEL_NAMES", "build_model", "register_model"]
