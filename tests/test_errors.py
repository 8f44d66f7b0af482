"""errors.py: what a one-line error says about the exception behind it."""
from __future__ import annotations

from errors import reason


def test_reason_is_the_first_line_or_the_type_name_and_never_too_long():
    assert reason(OSError("disk full\n  at /dev/sda")) == "disk full"
    assert reason(RuntimeError("   ")) == "RuntimeError"
    assert reason(ValueError("x" * 500), limit=40) == "x" * 40
