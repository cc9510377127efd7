"""Nothing of bridge mode is left behind (issue 16): no container network namespace, veth, bridge, host-gw route
or nftables table that no container accounts for once the faults are over, and none at all once the run has
stopped every agent and container.

Inputs (meta.json, written by run.py):
- after_faults: {"checked": bool, "left": {agent: {"netns"|"links"|"tables": [...]}}, "first_seen", "waited_s"}
  (runc agents only: what none of the agent's containers accounts for, after waiting for the agent's sweep);
- leftovers: {host or "run_namespace" or "containers" or "after_teardown": {kind: [...]}}, only what is left
  (empty: nothing) after the run stopped every process and removed every container;
- runtime: the agents' ("process" agents make no network objects: the teardown check still applies).
"""
from __future__ import annotations

from typing import Any


def check(meta: dict[str, Any]) -> dict[str, Any]:
    after_faults = meta.get("after_faults")
    teardown = meta.get("leftovers")
    if teardown is None:
        return {"valid": "unknown", "why": "the run recorded no leftover check (an older run, or its clean-up failed)"}
    violations: list[dict[str, Any]] = []
    if isinstance(after_faults, dict) and after_faults.get("left"):
        violations.append({"when": "after the faults (not swept within "
                                   f"{after_faults.get('waited_s')} s)", "left": after_faults["left"]})
    if teardown:
        violations.append({"when": "after the run stopped", "left": teardown})
    return {"valid": not violations, "runtime": meta.get("runtime", "process"),
            "after_faults_checked": bool(isinstance(after_faults, dict) and after_faults.get("checked")),
            "swept_during_wait": (after_faults or {}).get("first_seen") or {}, "violations": violations}
