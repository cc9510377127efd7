"""No lost acknowledged writes: at the end (after the faults healed and the final
reads), every acknowledged write is still there or was superseded.

For each key, take its final value (a final read). An ok write w of that key is
lost when the final value cannot come after w in any order consistent with real
time:
- the final value was written by an op that completed before w was invoked
  (it precedes w, so w or something later should have won), or
- the key is missing at the end and no delete could have followed w, or
- the final value was never written by anyone (reported as an unknown value).
A key with acknowledged writes but no final read gives "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from checkers import combine
from history import Call, Op, by_key, freeze, pair_ops


@dataclass
class LostWritesResult:
    valid: bool | str
    lost: list[dict[str, Any]] = field(default_factory=list)
    unknown_values: list[dict[str, Any]] = field(default_factory=list)
    no_final_read: list[str] = field(default_factory=list)
    acknowledged: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "acknowledged": self.acknowledged, "lost": self.lost,
                "unknown_values": self.unknown_values, "no_final_read": self.no_final_read}


def final_reads(history: Iterable[Op], after_ns: int) -> dict[str, Any]:
    """The last ok read of each key that was invoked at or after `after_ns`."""
    out: dict[str, Any] = {}
    for c in pair_ops(history):
        if c.f == "read" and c.status == "ok" and c.invoke >= after_ns:
            out[c.key] = c.value
    return out


def _writers(c: Call) -> Any:
    if c.f == "write":
        return freeze(c.value)
    if c.f == "cas":
        return freeze(c.value[1])
    return None  # delete


def check(history: Iterable[Op] | list[Call], final: dict[str, Any]) -> LostWritesResult:
    items = list(history)
    calls: list[Call] = pair_ops(items) if items and isinstance(items[0], Op) else items  # type: ignore[assignment]
    res = LostWritesResult(valid=True)
    verdicts: list[bool | str] = [True]
    for key, kc in sorted(by_key(calls).items()):
        acked = [c for c in kc if c.status == "ok" and c.f in ("write", "cas")]
        res.acknowledged += len(acked)
        if not acked:
            continue
        if key not in final:
            res.no_final_read.append(key)
            verdicts.append("unknown")
            continue
        value = freeze(final[key])
        sources = [c for c in kc if c.f in ("write", "cas", "delete") and _writers(c) == value]
        if not sources and value is None:
            for w in acked:
                res.lost.append({"key": key, "write": w.describe(), "final": None})
            verdicts.append(False)
            continue
        if not sources:
            res.unknown_values.append({"key": key, "final": final[key]})
            verdicts.append(False)
            continue
        for w in acked:
            if any(s is w for s in sources):
                continue
            # Could some source of the final value be ordered after w? Only if it did not
            # complete before w was invoked.
            if not any(s.complete >= w.invoke for s in sources):
                res.lost.append({"key": key, "write": w.describe(), "final": final[key]})
                verdicts.append(False)
    res.valid = combine(verdicts)
    return res
