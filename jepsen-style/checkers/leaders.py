"""At most one leader per term (Raft's Election Safety), from status samples
{"node", "time", "term", "leader", "state"}.

A node that says state == "leader" claims term T for itself; a node that names
`leader` X while in term T reports X as T's leader. `aliases` maps the names in
`leader` (e.g. Raft addresses) to node names. Two different leaders for one term,
from any mix of claims and reports, is a violation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class LeadersResult:
    valid: bool
    terms: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    leaders: dict[int, str] = field(default_factory=dict)   # term -> leader (when unique)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "terms": self.terms, "violations": self.violations,
                "leaders": {str(k): v for k, v in sorted(self.leaders.items())}}


def check(samples: Iterable[dict[str, Any]], aliases: dict[str, str] | None = None,
          use_reports: bool = True) -> LeadersResult:
    aliases = aliases or {}
    seen: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for s in samples:
        term = s.get("term")
        if term is None:
            continue
        if s.get("state") == "leader":
            who = s["node"]
        elif use_reports and s.get("leader"):
            who = aliases.get(s["leader"], s["leader"])
        else:
            continue
        seen.setdefault(int(term), {}).setdefault(who, []).append(s)
    res = LeadersResult(valid=True, terms=len(seen))
    for term, who in sorted(seen.items()):
        if len(who) == 1:
            res.leaders[term] = next(iter(who))
            continue
        res.valid = False
        res.violations.append({"term": term, "leaders": {
            name: [{"node": e["node"], "time": e.get("time"), "state": e.get("state")} for e in ev[:3]]
            for name, ev in sorted(who.items())}})
    return res
