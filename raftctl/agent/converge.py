"""What the agent must do to make its machine match its assignments (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("lost", "stopped")


@dataclass
class Actions:
    start: list[dict[str, Any]] = field(default_factory=list)   # placements to start here
    stop: list[str] = field(default_factory=list)               # local containers to stop
    report_stopped: list[str] = field(default_factory=list)     # placements to report as stopped


def plan(placements: list[dict[str, Any]], local: set[str]) -> Actions:
    """Diff the machine's assigned placements against the containers it runs."""
    out = Actions()
    assigned = set()
    for p in placements:
        pid = p["id"]
        assigned.add(pid)
        wanted = p["desired"] == "run" and p["state"] not in TERMINAL
        if wanted and pid not in local and p.get("spec") is not None:
            out.start.append(p)
        elif not wanted and pid in local:
            out.stop.append(pid)
        elif not wanted and pid not in local and p["desired"] == "stop" and p["state"] != "stopped":
            out.report_stopped.append(pid)
    out.stop.extend(sorted(local - assigned))
    return out
