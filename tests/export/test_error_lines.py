"""Export's one-line errors hold even for an exception raised without a message (issue 20, defect 4)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from export.errors import ExportError
from export.sources.torch_factory import load_state_dict


def test_an_unpickling_error_without_a_message_is_an_export_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``str(exc).strip().splitlines()[0]`` raised IndexError on an empty message."""
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, weights)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError()

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ExportError, match=r"needs more than tensors to load \(UnpicklingError\); bnfold never"):
        load_state_dict(weights)
