"""``bnfold-serve``'s flags against the environment: a flag always wins, in both directions."""

from __future__ import annotations

import pytest

from service.cli import settings_from


def test_no_allow_non_finite_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 6: ``--allow-non-finite`` had no ``--no-`` form, so BNFOLD_ALLOW_NON_FINITE=1 could not be undone."""
    monkeypatch.setenv("BNFOLD_ALLOW_NON_FINITE", "1")
    assert settings_from([]).allow_non_finite is True
    assert settings_from(["--no-allow-non-finite"]).allow_non_finite is False
    monkeypatch.delenv("BNFOLD_ALLOW_NON_FINITE")
    assert settings_from(["--allow-non-finite"]).allow_non_finite is True
