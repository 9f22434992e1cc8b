"""Error messages every stage writes the same way: one line, naming what was wrong.

first_line(exc)       an exception's first line of text, or its type's name when it has none
validation_problems   a pydantic (or FastAPI request) validation error as ``field: message; ...``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Mapping[str, Any]]: ...


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``str(exc)``; the exception's type name when its message is empty (an
    ``Exception()`` raised bare must still give a message, not crash the error path)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def validation_problems(exc: _HasErrors) -> str:
    """Each problem of a pydantic ``ValidationError`` (or FastAPI's ``RequestValidationError``) as
    ``dotted.field: message``, joined with ``; ``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
