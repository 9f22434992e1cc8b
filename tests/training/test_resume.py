"""Resuming: a checkpoint that does not fit the model is a CheckpointError with a one-line reason."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from torch import nn

from training.errors import CheckpointError
from training.resume import restore_weights


class _Refuses(nn.Module):
    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError()


def test_a_weight_mismatch_without_a_message_is_a_checkpoint_error() -> None:
    """Issue 20, defect 4: ``str(exc).splitlines()[0]`` raised IndexError on an empty message."""
    ckpt = SimpleNamespace(path=Path("run/last.safetensors"), state_dict={}, meta={"step": 3})
    with pytest.raises(CheckpointError, match=r"do not match this model \(RuntimeError\)$"):
        restore_weights(ckpt, _Refuses())  # type: ignore[arg-type]
