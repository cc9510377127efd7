"""Checkers for jepsen-style histories and samples. Each returns a result with a
`valid` field: True, False, or "unknown" (never a silent pass)."""
from __future__ import annotations

from typing import Any


def combine(values: list[Any]) -> bool | str:
    """False if any is False, else "unknown" if any is unknown, else True."""
    if any(v is False for v in values):
        return False
    if any(v != True for v in values):  # noqa: E712  ("unknown")
        return "unknown"
    return True
