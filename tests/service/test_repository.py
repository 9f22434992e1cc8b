"""Reading the model repository: which version folders serve."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from export.repository.writer import existing_versions
from service.repository import versions


def _version(model_dir: Path, name: str) -> None:
    (model_dir / name).mkdir(parents=True)
    (model_dir / name / "model.onnx").write_bytes(b"")


def test_only_addressable_version_folders_serve(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """'01' and '0' would load as versions no request can name; '²' (a digit to str.isdigit) made int() raise."""
    for name in ("1", "12", "01", "0", "\u00b2", "\u0661", ".3.123-abc.partial"):
        _version(tmp_path, name)
    with caplog.at_level(logging.WARNING, logger="service.repository"):
        assert versions(tmp_path) == [1, 12]
    skipped = sorted(r.getMessage().split(":")[0].rsplit("/", 1)[1] for r in caplog.records)
    assert skipped == ["0", "01"]
    assert "no leading zero" in caplog.records[0].getMessage()
    caplog.clear()
    assert versions(tmp_path) == [1, 12]
    assert not caplog.records  # once per folder: the index and every load scan the repository again
    assert existing_versions(tmp_path) == [0, 1, 1, 12]  # the exporter numbers past every ASCII-numeric folder
