"""Skipping a test that proves a promise, loudly: on stderr, as a warning in pytest's summary, and as the skip."""
from __future__ import annotations

import sys
import warnings
from typing import NoReturn

import pytest


def skip_loudly(what: str, problem: str, untested: str) -> NoReturn:
    """e.g. skip_loudly("RUNC ISOLATION TESTS", "not root", "Container isolation")."""
    msg = f"!!! {what} SKIPPED: {problem}. {untested} is NOT being tested. !!!"
    print("\n" + msg, file=sys.stderr)
    warnings.warn(msg, stacklevel=2)
    pytest.skip(msg)
