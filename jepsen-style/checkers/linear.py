"""Linearizability of registers (one per key): Wing–Gong search with Lowe's
just-in-time linearization, as in porcupine.

- P-compositional: each key is an independent register, checked on its own.
- Memoised on (bitset of linearized ops, register state).
- Info ops (indeterminate) complete at +infinity; info writes whose value nobody
  ever observed are pruned (they may be assumed not to have happened).
- A search budget (steps or seconds) that runs out gives "unknown", never a pass.

Register model: initial state None (job absent). write v -> v; delete -> None;
read -> must equal the state; cas [expected, new] -> if state == expected then new
(an ok cas must see expected; an info cas may have failed and changes nothing then).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from checkers import combine
from history import INF, Call, Op, by_key, freeze, pair_ops

DEFAULT_MAX_STEPS = 2_000_000
DEFAULT_TIMEOUT_S = 30.0


@dataclass
class KeyResult:
    key: str
    valid: bool | str
    ops: int                      # ops searched (after pruning)
    pruned: int = 0
    steps: int = 0
    reason: str = ""
    failing_op: Call | None = None
    window: list[Call] = field(default_factory=list)   # ops concurrent with the failing op
    prefix: list[Call] = field(default_factory=list)   # the last ops of the deepest linearization
    states: list[Any] = field(default_factory=list)    # register states possible before the failing op

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "valid": self.valid, "ops": self.ops, "pruned": self.pruned,
                "steps": self.steps, "reason": self.reason,
                "failing_op": self.failing_op.describe() if self.failing_op else None,
                "window": [c.describe() for c in self.window],
                "prefix": [c.describe() for c in self.prefix], "states": [repr(s) for s in self.states]}


@dataclass
class LinearResult:
    valid: bool | str
    keys: dict[str, KeyResult]

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.valid is False]

    @property
    def first_failure(self) -> KeyResult | None:
        """The failing key whose failing op happened first (the report's headline)."""
        fails = [r for r in self.failures if r.failing_op is not None]
        return min(fails, key=lambda r: r.failing_op.invoke) if fails else None  # type: ignore[union-attr]

    def to_json(self) -> dict[str, Any]:
        first = self.first_failure
        return {"valid": self.valid, "keys": len(self.keys),
                "unknown": [k for k, r in self.keys.items() if r.valid == "unknown"],
                "failures": [r.to_json() for r in self.failures],
                "first_failure": first.to_json() if first else None}


def _output(c: Call) -> Any:
    """The state an effectful op installs (None for delete); reads have none."""
    if c.f == "write":
        return freeze(c.value)
    if c.f == "cas":
        return freeze(c.value[1])
    return None


def _observed(calls: list[Call]) -> set[Any]:
    """Values some op may have depended on: ok reads' values, and every cas's expected value
    (an info cas that took effect observed it too, so its writer must not be pruned)."""
    seen: set[Any] = set()
    for c in calls:
        if c.f == "read" and c.status == "ok":
            seen.add(freeze(c.value))
        elif c.f == "cas":
            seen.add(freeze(c.value[0]))
    return seen


def prune(calls: list[Call]) -> tuple[list[Call], int]:
    """Drop info reads (no effect, no answer) and info writes/deletes/cas whose
    resulting value no ok read or ok cas ever observed (sound: nothing could have
    been linearized while the register held that value)."""
    seen = _observed(calls)
    kept = []
    for c in calls:
        if c.status == "info" and (c.f == "read" or _output(c) not in seen):
            continue
        kept.append(c)
    return kept, len(calls) - len(kept)


def bound_info(calls: list[Call]) -> list[Call]:
    """An info write (or cas) that is the only writer of its value, and whose value some ok
    read or ok cas observed, must have taken effect before the first such observer completed:
    use that as its completion instead of +infinity. Sound when values are unique per key;
    it keeps the search from trying every late position for every indeterminate write."""
    writers: dict[Any, int] = {}
    for c in calls:
        if c.f in ("write", "cas"):
            writers[_output(c)] = writers.get(_output(c), 0) + 1
    first_seen: dict[Any, int] = {}
    for c in calls:
        if c.status != "ok" or c.f not in ("read", "cas"):
            continue
        v = freeze(c.value) if c.f == "read" else freeze(c.value[0])
        first_seen[v] = min(first_seen.get(v, INF), c.complete)
    out = []
    for c in calls:
        v = _output(c)
        if (c.status == "info" and c.f in ("write", "cas") and v is not None and writers.get(v) == 1
                and v in first_seen and first_seen[v] >= c.invoke):
            c = dataclasses.replace(c, complete=first_seen[v])
        out.append(c)
    return out


def step(state: Any, c: Call) -> tuple[bool, Any]:
    if c.f == "write":
        return True, freeze(c.value)
    if c.f == "delete":
        return True, None
    if c.f == "read":
        return state == freeze(c.value), state
    if c.f == "cas":
        expected, new = freeze(c.value[0]), freeze(c.value[1])
        if c.status == "ok":
            return state == expected, new
        return True, new if state == expected else state
    raise ValueError(f"unknown function {c.f!r}")


def check_key(key: str, calls: list[Call], max_steps: int = DEFAULT_MAX_STEPS,
              timeout_s: float = DEFAULT_TIMEOUT_S, initial: Any = None) -> KeyResult:
    """Is this one register's history linearizable?"""
    kept, pruned = prune(calls)
    kept = bound_info(kept)
    n = len(kept)
    res = KeyResult(key=key, valid=True, ops=n, pruned=pruned)
    if n == 0:
        return res
    # Entries 1..2n: (time, kind 0=call 1=return); a call sorts before a return at the same time
    # (so ties count as concurrent, the lenient reading). 0 = head, 2n+1 = tail.
    raw = sorted([(c.invoke, 0, i) for i, c in enumerate(kept)] + [(c.complete, 1, i) for i, c in enumerate(kept)])
    tail = 2 * n + 1
    is_call = [False] * (tail + 1)
    op_of = [0] * (tail + 1)
    match = [0] * (tail + 1)
    ret_time = [0] * (tail + 1)
    call_entry = [0] * n
    ret_entry = [0] * n
    for e, (t, kind, i) in enumerate(raw, start=1):
        op_of[e] = i
        is_call[e] = kind == 0
        ret_time[e] = t
        if kind == 0:
            call_entry[i] = e
        else:
            ret_entry[i] = e
    for i in range(n):
        match[call_entry[i]] = ret_entry[i]
    # Indeterminate deletes are interchangeable: when one is linearized, the earliest-invoked
    # pending one can always take its place. So only allow them in invoke order
    # (symmetry reduction; without it k floating deletes cost 2^k memo states).
    needs = [0] * n
    mask = 0
    for i in sorted((i for i, c in enumerate(kept) if c.f == "delete" and c.complete == INF),
                    key=lambda i: (kept[i].invoke, i)):
        needs[i] = mask
        mask |= 1 << i
    nxt = list(range(1, tail + 2))
    prv = list(range(-1, tail))

    def lift(e: int) -> None:
        r = match[e]
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    def unlift(e: int) -> None:
        r = match[e]
        prv[nxt[r]] = r
        nxt[prv[r]] = r
        prv[nxt[e]] = e
        nxt[prv[e]] = e

    state: Any = freeze(initial)
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []
    best_depth = -1
    best_op = -1
    best_states: list[Any] = []
    best_prefix: list[int] = []
    steps = 0
    deadline = time.monotonic() + timeout_s
    entry = nxt[0]
    passed = True
    while nxt[0] != tail:
        steps += 1
        if steps > max_steps or (steps & 0x3FFF == 0 and time.monotonic() > deadline):
            res.valid, res.steps = "unknown", steps
            res.reason = (f"search budget exhausted after {steps} steps "
                          f"({'steps' if steps > max_steps else 'time'}); not a pass")
            return res
        if is_call[entry]:
            i = op_of[entry]
            if needs[i] and linearized & needs[i] != needs[i]:
                entry = nxt[entry]
                continue
            ok, new_state = step(state, kept[i])
            if ok:
                new_lin = linearized | (1 << op_of[entry])
                memo = (new_lin, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_lin
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
            continue
        # A return entry: its op was not linearized before it returned.
        if ret_time[entry] == INF:
            break  # every finite op is linearized; the info ops left can all go at the very end
        depth = len(stack)
        if depth > best_depth:
            best_depth, best_op, best_states = depth, op_of[entry], [state]
            best_prefix = [op_of[e] for e, _ in stack[-5:]]
        elif depth == best_depth and op_of[entry] == best_op and state not in best_states \
                and len(best_states) < 8:
            best_states.append(state)
        if not stack:
            passed = False
            break
        entry, state = stack.pop()
        linearized &= ~(1 << op_of[entry])
        unlift(entry)
        entry = nxt[entry]
    res.steps = steps
    if passed:
        return res
    failing = kept[best_op]
    res.valid = False
    res.failing_op = failing
    res.states = best_states
    res.prefix = [kept[i] for i in best_prefix]
    res.window = [c for c in kept if c.invoke <= failing.complete and c.complete >= failing.invoke
                  and c is not failing]
    res.reason = (f"{failing.describe()} cannot be linearized: the register could only hold "
                  f"{', '.join(repr(s) for s in best_states)} then")
    return res


def check(history: Iterable[Op] | list[Call], max_steps: int = DEFAULT_MAX_STEPS,
          timeout_s: float = DEFAULT_TIMEOUT_S) -> LinearResult:
    """Check every key's register independently; `timeout_s` is shared by all keys."""
    items = list(history)
    calls = pair_ops(items) if items and isinstance(items[0], Op) else items  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    results: dict[str, KeyResult] = {}
    for key, key_calls in sorted(by_key(calls).items()):  # type: ignore[arg-type]
        left = max(0.0, deadline - time.monotonic())
        results[key] = check_key(key, key_calls, max_steps=max_steps, timeout_s=left)
    return LinearResult(valid=combine([r.valid for r in results.values()]), keys=results)
