"""Tuning knobs given in milliseconds through the environment (a benchmark's comparison of two settings)."""
from __future__ import annotations

import os
from typing import Mapping


def millis_from_env(name: str, default_s: float, low_ms: float, high_ms: float,
                    env: Mapping[str, str] | None = None) -> float:
    """The variable ``name`` (milliseconds, ``low_ms`` to ``high_ms``) in seconds, or ``default_s`` when it is
    unset or empty; ValueError names the variable."""
    raw = (os.environ if env is None else env).get(name)
    if not raw:
        return default_s
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number of milliseconds") from None
    if not low_ms <= ms <= high_ms:
        raise ValueError(f"{name}: {raw!r} is outside {low_ms:g}-{high_ms:g} ms")
    return ms / 1000
