"""After the faults heal, every job's running replicas equal its spec within a bound.

Samples: {"time": ns, "job": name, "want": int, "running": int}. For each job seen
after `heal_ns`: it must match (running == want) at some time no later than
heal + bound and at every sample after that. A job whose samples stop before
heal + bound gives "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from checkers import combine


@dataclass
class ConvergenceResult:
    valid: bool | str
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "jobs": self.jobs}


def check(samples: Iterable[dict[str, Any]], heal_ns: int, bound_s: float) -> ConvergenceResult:
    limit = heal_ns + int(bound_s * 1e9)
    per_job: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        if s["time"] >= heal_ns:
            per_job.setdefault(s["job"], []).append(s)
    res = ConvergenceResult(valid=True)
    verdicts: list[bool | str] = [True]
    for job, ss in sorted(per_job.items()):
        ss.sort(key=lambda s: s["time"])
        converged_at = None
        for s in ss:
            if s["running"] == s["want"]:
                if converged_at is None:
                    converged_at = s["time"]
            else:
                converged_at = None
        last = ss[-1]
        if converged_at is not None and converged_at <= limit:
            verdict: bool | str = True
        elif last["time"] < limit:
            verdict = "unknown"
        else:
            verdict = False
        verdicts.append(verdict)
        res.jobs[job] = {"valid": verdict, "want": last["want"], "running": last["running"],
                         "converged_after_s": None if converged_at is None else (converged_at - heal_ns) / 1e9}
    res.valid = combine(verdicts)
    return res
