"""Discovery never returns an endpoint that was not healthy within a bound.

Inputs:
- answers: {"time": ns, "service": name, "endpoints": ["10.77.0.21:31000", ...]}
- health:  {"time": ns, "endpoint": "10.77.0.21:31000", "healthy": bool}
  (ground truth seen directly by an observer: a probe, or the agent's actual containers).

An endpoint went bad at the first unhealthy observation after its last healthy one.
An answer at time t that contains an endpoint that has been bad since u with
t - u > bound is a violation; so is an endpoint never observed healthy at all, once the
observation has been running for longer than the bound.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class DiscoveryResult:
    valid: bool
    answers: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "answers": self.answers, "violations": self.violations[:20],
                "violation_count": len(self.violations)}


def _bad_since(obs: list[tuple[int, bool]], times: list[int], t: int) -> int | None:
    """When the endpoint went bad, if its last observation at or before t is unhealthy."""
    i = bisect.bisect_right(times, t) - 1
    if i < 0 or obs[i][1]:
        return None
    while i > 0 and not obs[i - 1][1]:
        i -= 1
    return obs[i][0]


def check(answers: Iterable[dict[str, Any]], health: Iterable[dict[str, Any]], bound_s: float) -> DiscoveryResult:
    bound = int(bound_s * 1e9)
    obs: dict[str, list[tuple[int, bool]]] = {}
    start: int | None = None
    for h in sorted(health, key=lambda h: h["time"]):
        obs.setdefault(h["endpoint"], []).append((h["time"], bool(h["healthy"])))
        start = h["time"] if start is None else start
    times = {ep: [t for t, _ in o] for ep, o in obs.items()}
    res = DiscoveryResult(valid=True)
    for a in answers:
        res.answers += 1
        t = a["time"]
        for ep in a["endpoints"]:
            if ep not in obs:
                if start is not None and t - start > bound:
                    res.violations.append({"time": t, "service": a.get("service"), "endpoint": ep,
                                           "why": "never observed healthy"})
                continue
            since = _bad_since(obs[ep], times[ep], t)
            if since is not None and t - since > bound:
                res.violations.append({"time": t, "service": a.get("service"), "endpoint": ep,
                                       "why": f"unhealthy for {(t - since) / 1e9:.2f}s"})
    res.valid = not res.violations
    return res
