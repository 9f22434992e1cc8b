"""One-line error messages: an exception's first line, pydantic's problems as ``field: message``."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from contracts.errors import first_line, validation_problems


def test_first_line_of_a_message_and_of_none() -> None:
    assert first_line(ValueError("\n  bad value\nsecond line")) == "bad value"
    assert first_line(RuntimeError()) == "RuntimeError"  # ''.splitlines()[0] raised IndexError here
    assert first_line(OSError("   \n \t")) == "OSError"


def test_validation_problems_name_each_field() -> None:
    class Inner(BaseModel):
        port: int

    class Outer(BaseModel):
        inner: Inner
        name: str

    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"inner": {"port": "http"}})
    problems = validation_problems(info.value)
    assert problems.startswith("inner.port: Input should be a valid integer")
    assert problems.endswith("; name: Field required")
