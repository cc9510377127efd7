"""Sizes, CPU and durations: parse what people write, format what people read.

Sizes are bytes (`64Mi`, `1Gi`, `100M`, plain integers), CPU is millicores
(`250m`, `0.5`, `2`), durations are milliseconds (`500ms`, `1s`, `1m30s`,
`2h`; a plain number means seconds).
"""
from __future__ import annotations

import math
import re
from typing import Any

from raftctl.errors import ValidationError

_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?\s*$")
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DUR_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


_MAX = 2**53  # larger figures are typos (8 PiB, 285,000 years) and no longer exact as floats


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounded(x: int | float, value: Any, field: str | None) -> float:
    """``x`` as a float, or a ValidationError for infinities, NaN and figures past 2**53."""
    if (isinstance(x, int) and abs(x) > _MAX) or not math.isfinite(float(x)) or abs(float(x)) > _MAX:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValidationError(f"{shown} is out of range", field=field)
    return float(x)


def parse_size(value: Any, field: str | None = None) -> int:
    """Bytes from `64Mi`, `1Gi`, `100M`, `1500` or an integer."""
    if _is_number(value):
        if _bounded(value, value, field) < 0:
            raise ValidationError(f"{value!r} is negative", field=field)
        return int(value)
    if not isinstance(value, str):
        raise ValidationError(f"{value!r} is not a size; use e.g. 64Mi", field=field)
    m = _SIZE_RE.match(value)
    if not m:
        hint = ""
        fixed = re.match(r"^\s*(\d+)\s*([kKmMgGtT])[bB]\s*$", value)
        if fixed:
            hint = f"; use {fixed.group(1)}{fixed.group(2).upper()}i"
        else:
            hint = "; use e.g. 64Mi, 1Gi or a number of bytes"
        raise ValidationError(f"{value!r} is not a size{hint}", field=field)
    number, unit = m.group(1), (m.group(2) or "").lower()
    result = _bounded(float(number) * _SIZE_UNITS[unit], value, field)
    if result != int(result):
        raise ValidationError(f"{value!r} is not a whole number of bytes", field=field)
    return int(result)


def parse_cpu(value: Any, field: str | None = None) -> int:
    """Millicores from `250m`, `0.5`, `2` or a number of cores."""
    if _is_number(value):
        cores = _bounded(value, value, field)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+m\s*", value):
        return int(_bounded(int(value.strip()[:-1]), value, field))
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        cores = _bounded(float(value), value, field)
    else:
        raise ValidationError(f"{value!r} is not a CPU amount; use e.g. 250m or 0.5", field=field)
    if cores < 0:
        raise ValidationError(f"{value!r} is negative", field=field)
    millis = cores * 1000
    if abs(millis - round(millis)) > 1e-6:
        raise ValidationError(f"{value!r} is finer than a millicore", field=field)
    return int(round(millis))


def parse_duration(value: Any, field: str | None = None) -> int:
    """Milliseconds from `500ms`, `1s`, `1m30s`, `2h`; a plain number means seconds."""
    if _is_number(value):
        if _bounded(value, value, field) < 0:
            raise ValidationError(f"{value!r} is negative", field=field)
        return int(round(_bounded(float(value) * 1000, value, field)))
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{value!r} is not a duration; use e.g. 500ms, 1s, 1m30s", field=field)
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(round(_bounded(float(text) * 1000, value, field)))
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_MS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValidationError(f"{value!r} is not a duration; use e.g. 500ms, 1s, 1m30s", field=field)
    return int(round(_bounded(total, value, field)))


def format_size(n: int) -> str:
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return str(n)


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 and millis else f"{millis}m"


def format_duration(ms: int) -> str:
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
