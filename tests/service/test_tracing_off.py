"""Tracing off costs one flag check per request: the batcher's :func:`service.tracing.current` does not look
at the current span unless ``configure`` turned tracing on (the end-to-end spans: test_tracing.py)."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from service import tracing


def test_current_is_none_while_tracing_is_off_even_under_a_recording_span(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = TracerProvider().get_tracer("test")  # not the global provider: nothing else in this process changes
    monkeypatch.setattr(tracing, "_enabled", False)
    with tracer.start_as_current_span("caller"):
        assert tracing.current() is None
        monkeypatch.setattr(tracing, "_enabled", True)  # as configure(True) leaves it
        assert tracing.current() == otel_context.get_current()
    assert tracing.current() is None  # on, but no recording span
