"""deploy.py: one pass of a deploy, as (the commands, whether the pass ends there, the batch it offers)."""
from __future__ import annotations

from typing import Any

import pytest

from raftctl.node.rollout import deploy

from .record_fixtures import as_job
from .rollout_helpers import EPOCH, NEW, NOW, OLD, V1, V2, deployment, job, p, seen, spec


def summary(step: deploy.Step) -> tuple:
    """(command summaries, final, batch ids, batch budget)"""
    cmds = []
    for cmd in step.commands:
        kind = type(cmd).__name__
        if kind == "SetDeployment":
            d = cmd.deployment
            cmds.append(f"deployment {d['status']}" + (" promoted" if d.get("promoted") else "") + f" surge {d['surge']}")
        elif kind == "Retire":
            cmds.append(f"retire {','.join(cmd.placements)}")
        elif kind == "RollbackJob":
            cmds.append(f"rollback to {cmd.version}")
    return cmds, step.final, [x.id for x, _ in step.batch.candidates], step.batch.budget


CANARY = spec("2", canary=1)
AUTO_CANARY = spec("2", canary=1, auto_promote=True)
UNHEALTHY: dict[str, Any] = {"health": "unhealthy", "healthy_at": None}

CASES = [
    # (case, versions, placements, deployment, published, expected summary)
    ("nothing outdated, no deployment: nothing to do", [V1], OLD, None, 3, ([], False, [], 0)),
    ("outdated without a deployment: start one, end the pass", [V1, V2], OLD, None, 3,
     (["deployment running promoted surge 0"], True, [], 0)),
    ("a finished deployment leaves the job to the drain", [V1, V2], OLD, deployment(status="failed"), 3,
     ([], False, [], 0)),
    ("ready and nothing outdated: success", [V1, V2], NEW, deployment(), 3, (["deployment successful promoted surge 0"], True, [], 0)),
    ("the next batch: lowest ids first, budget max_unavailable", [V1, V2], OLD, deployment(), 3,
     ([], False, ["a", "b", "c"], 1)),
    ("serving surge replicas add to the budget", [V1, V2], OLD, deployment(), 5, ([], False, ["a", "b", "c"], 3)),
    ("one missing endpoint spends it", [V1, V2], OLD, deployment(), 2, ([], False, ["a", "b", "c"], 0)),
    ("an outdated replica not serving goes at once", [V1, V2], [p("a", 0, 1, **UNHEALTHY)] + OLD[1:], deployment(), 3,
     (["retire a"], False, ["b", "c"], 1)),
    ("no batch while one retires", [V1, V2], [p("a", 0, 1, retiring_at=NOW)] + OLD[1:], deployment(), 3,
     ([], False, [], 0)),
    ("no batch while a new replica is not ready", [V1, V2], [p("x", 0, 2, healthy_at=NOW)] + OLD[1:], deployment(),
     3, ([], False, [], 0)),
    ("past the deadline: revert to the stable version", [V1, V2], [p("x", 0, 2, **UNHEALTHY)] + OLD[1:],
     deployment(deadline=NOW - 1), 3, (["deployment reverted promoted surge 0", "rollback to 1"], True, [], 0)),
    ("canaries wait for promotion", [V1, CANARY], OLD + [p("k", 3, 2)], deployment(canary=1, promoted=False), 4,
     ([], True, [], 0)),
    ("canaries not yet healthy wait too", [V1, AUTO_CANARY], OLD + [p("k", 3, 2, **UNHEALTHY)],
     deployment(canary=1, promoted=False), 3, ([], True, [], 0)),
    ("healthy canaries promoted automatically", [V1, AUTO_CANARY], OLD + [p("k", 3, 2)],
     deployment(canary=1, promoted=False), 4, (["deployment running promoted surge 0"], True, [], 0)),
    ("surge replicas retire when all are current and ready", [V1, V2], NEW + [p("s", 3, 2)], deployment(surge=1), 4,
     (["retire s", "deployment running promoted surge 0"], True, [], 0)),
    ("current but not ready, no surge: the deploy waits", [V1, V2], NEW[:2] + [p("z", 2, 2, healthy_at=NOW)],
     deployment(), 3, ([], False, [], 0)),
]


@pytest.mark.parametrize("case,versions,pl,dep,published,want", CASES, ids=[x[0] for x in CASES])
def test_deploy_step(case, versions, pl, dep, published, want):
    j = job(*versions, stable=(1,))
    assert summary(deploy.step(seen(j, pl, dep=dep, published=published), EPOCH)) == want


def test_a_started_deployment_carries_its_deadline_surge_and_canaries():
    cmd = deploy.start(seen(job(V1, spec("2", canary=2, max_surge=1, deadline_ms=60_000)), OLD), EPOCH)
    assert cmd.deployment == {"job": "web", "version": 2, "status": "running", "started_at": NOW,
                              "deadline": NOW + 60_000, "total": 3, "surge": 2, "canary": 2, "promoted": False}
    assert cmd.epoch == EPOCH


STABLE = [
    # (case, version tags, stable versions, expected)
    ("none stable", ["1", "2"], (), None),
    ("the latest stable", ["1", "2", "3"], (1, 2), 2),
    ("not one with the current spec", ["1", "2", "1", "2"], (2, 3), 3),
    ("the current one itself is not a rollback", ["1", "2"], (2,), None),
]


@pytest.mark.parametrize("case,tags,stable,want", STABLE, ids=[x[0] for x in STABLE])
def test_last_stable(case, tags, stable, want):
    j = as_job(job(*(spec(t) for t in tags), stable=stable))
    assert deploy.last_stable(j, j.versions[-1].spec) == want
