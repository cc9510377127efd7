"""Jepsen-style operation histories: JSON lines of invoke/ok/fail/info ops.

One op per line:
    {"process": 3, "type": "invoke", "f": "write", "key": "j1", "value": "17", "time": 1234}
    {"process": 3, "type": "ok",     "f": "write", "key": "j1", "value": "17", "time": 5678, "index": 42}

- "ok": the operation took effect (reads carry the value they saw; None = missing).
- "fail": the operation certainly did not take effect (dropped by the checkers).
- "info": indeterminate (timeout, 5xx after proposing): it may or may not have
  taken effect; its completion is treated as happening at +infinity (INF).

Times are integer nanoseconds everywhere (history, calls, checkers), never floats:
near 1.8e18 ns a float64 resolves only 256 ns, so two events 1 ns apart would
compare as simultaneous (concurrent) and a stale read could pass.

`pair_ops` turns a history into `Call`s (one per operation) for the checkers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

TYPES = ("invoke", "ok", "fail", "info")
FUNCTIONS = ("write", "read", "cas", "delete")
# "Never completes": an int later than any int64 nanosecond timestamp, so every
# comparison stays exact integer arithmetic.
INF = 1 << 63


@dataclass
class Op:
    process: int
    type: str
    f: str
    key: str
    value: Any = None
    time: int = 0
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"process": self.process, "type": self.type, "f": self.f,
                               "key": self.key, "value": self.value, "time": self.time}
        if self.index is not None:
            out["index"] = self.index
        out.update(self.extra)
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Op":
        known = {"process", "type", "f", "key", "value", "time", "index"}
        if d.get("type") not in TYPES:
            raise ValueError(f"bad op type in {d!r}")
        return Op(process=int(d["process"]), type=d["type"], f=d["f"], key=str(d["key"]),
                  value=d.get("value"), time=int(d["time"]), index=d.get("index"),
                  extra={k: v for k, v in d.items() if k not in known})


@dataclass
class Call:
    """One operation: its invocation and completion, paired."""

    id: int
    process: int
    f: str
    key: str
    value: Any          # input (write value, cas [expected, new]) or, for reads, the value read
    status: str         # "ok" or "info"
    invoke: int         # ns
    complete: int       # ns; INF for info
    index: int | None = None

    def describe(self) -> str:
        end = "inf" if self.complete == INF else seconds(self.complete)
        return (f"op#{self.id} p{self.process} {self.status} {self.f} {self.key}={self.value!r} "
                f"[{seconds(self.invoke)} .. {end}]")


def seconds(ns: int) -> str:
    """Integer nanoseconds as seconds with millisecond digits, without a float."""
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{whole}.{frac // 1_000_000:03d}s"


def read_history(path: str) -> list[Op]:
    with open(path) as f:
        return [Op.from_json(json.loads(line)) for line in f if line.strip()]


def write_history(path: str, ops: Iterable[Op]) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(json.dumps(op.to_json()) + "\n")


def pair_ops(history: Iterable[Op]) -> list[Call]:
    """Pair each invoke with its process's next completion.

    "fail" ops are dropped (no effect). An invoke without a completion (the history
    was cut) counts as "info". Reads take the value from the completion; other ops
    from the invocation.
    """
    calls: list[Call] = []
    pending: dict[int, Op] = {}
    for op in history:
        if op.type == "invoke":
            if op.process in pending:
                raise ValueError(f"process {op.process} invoked twice without completing: {op.to_json()}")
            pending[op.process] = op
            continue
        inv = pending.pop(op.process, None)
        if inv is None:
            raise ValueError(f"completion without invoke: {op.to_json()}")
        if inv.f != op.f or inv.key != op.key:
            raise ValueError(f"completion does not match invoke: {inv.to_json()} / {op.to_json()}")
        if op.type == "fail":
            continue
        value = op.value if op.f == "read" else inv.value
        complete = INF if op.type == "info" else op.time
        calls.append(Call(id=len(calls), process=op.process, f=op.f, key=op.key, value=value,
                          status=op.type, invoke=inv.time, complete=complete, index=op.index))
    for inv in pending.values():
        calls.append(Call(id=len(calls), process=inv.process, f=inv.f, key=inv.key, value=inv.value,
                          status="info", invoke=inv.time, complete=INF))
    return calls


def by_key(calls: Iterable[Call]) -> dict[str, list[Call]]:
    out: dict[str, list[Call]] = {}
    for c in calls:
        out.setdefault(c.key, []).append(c)
    return out


def freeze(value: Any) -> Any:
    """A hashable, comparable form of a JSON value (lists -> tuples, dicts -> sorted tuples)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def iter_json_lines(path: str) -> Iterator[dict[str, Any]]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
