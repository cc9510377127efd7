"""No container of a placement the control plane gave up on keeps running past a bound.

Inputs:
- placements: {"time": ns, "job": name, "placements": [{"id", "desired", "state", "machine"}, ...]}
  (consistent reads of each watched job's placements);
- containers: {"time": ns, "agent": machine, "running": [container id = placement id, ...]}
  (ground truth read from each agent's driver state);
- cuts: [(start_ns, end_ns), ...] intervals during which agents could not reach the control plane
  (an agent cannot learn that its placement was given up while it is cut off).

A placement is given up from the first sample that shows it `lost`, `stopped` or
`desired: stop`, or missing from a later sample of its job. A container of it still running
at time t violates the bound when t - max(given up, end of the cut covering that moment) > bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

GIVEN_UP_STATES = ("lost", "stopped")  # not "exited": the agent restarts those in place


@dataclass
class FencingResult:
    valid: bool
    containers_checked: int = 0
    given_up: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "containers_checked": self.containers_checked, "given_up": self.given_up,
                "violations": self.violations[:20], "violation_count": len(self.violations)}


def given_up_times(placements: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Placement id -> when the control plane was first seen to give it up."""
    out: dict[str, int] = {}
    seen_in_job: dict[str, set[str]] = {}
    for s in sorted(placements, key=lambda s: s["time"]):
        ids = set()
        for p in s["placements"]:
            ids.add(p["id"])
            if p["id"] not in out and (p.get("desired") == "stop" or p.get("state") in GIVEN_UP_STATES):
                out[p["id"]] = s["time"]
        for gone in seen_in_job.get(s["job"], set()) - ids:
            out.setdefault(gone, s["time"])
        seen_in_job[s["job"]] = seen_in_job.get(s["job"], set()) | ids
    return out


def _free_from(t: int, cuts: list[tuple[int, int]]) -> int:
    """The first moment at or after t when no cut is in force."""
    for a, b in sorted(cuts):
        if a <= t <= b:
            t = b
    return t


def check(placements: Iterable[dict[str, Any]], containers: Iterable[dict[str, Any]],
          cuts: list[tuple[int, int]], bound_s: float) -> FencingResult:
    bound = int(bound_s * 1e9)
    gave_up = given_up_times(placements)
    res = FencingResult(valid=True, given_up=len(gave_up))
    reported: set[str] = set()
    for c in sorted(containers, key=lambda c: c["time"]):
        for cid in c["running"]:
            res.containers_checked += 1
            since = gave_up.get(cid)
            if since is None or since > c["time"] or cid in reported:
                continue
            start = _free_from(since, cuts)
            if c["time"] - start > bound:
                reported.add(cid)
                res.valid = False
                res.violations.append({"container": cid, "agent": c["agent"], "time": c["time"],
                                       "given_up_at": since, "late_s": round((c["time"] - start) / 1e9, 2)})
    return res
