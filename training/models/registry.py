"""A string -> constructor registry behind :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from training.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
MODEL_NAMES: list[str] = []


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name`` so that ``build_model(name, ...)`` can build it."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        MODEL_NAMES.append(name)
        return factory

    return decorator


def build_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``options``.

    Raises :class:`ConfigError` naming the valid models or options when ``name`` or an option is unknown.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(accepted)}")
    return factory(**options)
