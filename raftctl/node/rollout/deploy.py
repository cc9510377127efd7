"""Rolling deploys (pure): the deployment record and the batches of outdated replicas.

A new version starts a deployment record (its deadline, surge and canaries). Canaries (``update.canary``
replicas of the new version beside the old ones) wait for a promotion, automatic once they are healthy if
``auto_promote``. Then batches: the next one starts when every current replica is ready and nothing retires,
``max_unavailable`` at a time plus the surge replicas already serving; outdated replicas that are not serving go
at once. The deploy succeeds when every replica is current and ready; its surge replicas then retire. Not done
by its deadline, it fails and, with ``auto_revert``, rolls back to the last stable version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raftctl.node.rollout.view import NO_BATCH, Batch, Observed
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import Deployment, Job, JobSpec, to_wire


@dataclass(frozen=True)
class Step:
    commands: list[c.Command] = field(default_factory=list)
    final: bool = False          # nothing else (no drain, no batch) happens for this job this pass
    batch: Batch = NO_BATCH      # outdated replicas to retire within the budget


def step(o: Observed, epoch: int) -> Step:
    """The deploy's part of this pass."""
    dep = o.deployment
    if o.outdated and dep is None:
        return Step([start(o, epoch)], final=True)
    if dep is None or dep.status != "running":
        return Step()
    changed = record(o, dep, epoch)
    if changed:
        return Step(changed, final=True)
    if not dep.promoted:
        return Step(final=True)  # canaries run beside the old version until promoted
    if not o.outdated:
        return Step(retire_surplus(o, dep, epoch), final=True) if o.surplus else Step()
    return next_batch(o, epoch)


def start(o: Observed, epoch: int) -> c.SetDeployment:
    upd = o.update
    dep = {"job": o.name, "version": o.version, "status": "running", "started_at": o.now,
           "deadline": o.now + upd.deadline, "total": len(o.outdated), "surge": max(upd.canary, upd.max_surge),
           "canary": upd.canary, "promoted": upd.canary == 0}
    how = (f"{upd.canary} canaries first, then " if upd.canary else "") + \
        f"{upd.max_unavailable} at a time" + (f", {upd.max_surge} extra" if upd.max_surge else "")
    return c.SetDeployment(epoch=epoch, job=o.name, deployment=dep,
                           message=f"deploy of {o.name} version {o.version} started: "
                                   f"{len(o.outdated)} replicas to replace, {how}")


def record(o: Observed, dep: Deployment, epoch: int) -> list[c.Command]:
    """A running deployment's record moves on: promoted, successful, or failed (and maybe reverted)."""
    canaries_ready = [p for p in o.ready if p.replica >= o.want]
    waiting_promotion = not dep.promoted and len(canaries_ready) >= (dep.canary or 0)
    if waiting_promotion and o.update.auto_promote:
        return [c.SetDeployment(epoch=epoch, job=o.name, deployment={**to_wire(dep), "promoted": True},
                                message=f"{len(canaries_ready)} canaries of {o.name} version {o.version} healthy: "
                                        "promoted automatically")]
    if not o.outdated and not o.surplus and len(o.ready) >= o.want:
        return [c.SetDeployment(epoch=epoch, job=o.name,
                                deployment={**to_wire(dep), "status": "successful", "finished_at": o.now},
                                message=f"deploy of {o.name} version {o.version} succeeded")]
    if o.now > (dep.deadline or 0) and not waiting_promotion:
        return fail(o, dep, epoch)
    return []


def fail(o: Observed, dep: Deployment, epoch: int) -> list[c.Command]:
    back = last_stable(o.job, o.spec) if o.update.auto_revert else None
    failed: dict[str, Any] = {**to_wire(dep), "status": "reverted" if back else "failed", "finished_at": o.now,
                              "reason": f"not healthy by the deadline ({o.update.deadline // 1000}s)"}
    msg = f"deploy of {o.name} version {o.version} failed: not healthy by its deadline"
    if not back:
        return [c.SetDeployment(epoch=epoch, job=o.name, deployment=failed, message=msg)]
    return [c.SetDeployment(epoch=epoch, job=o.name, deployment=failed, message=f"{msg}; rolling back to version {back}"),
            c.RollbackJob(name=o.name, version=back)]


def last_stable(job: Job, current_spec: JobSpec) -> int | None:
    """The latest version marked stable whose spec is not the current one (rolling back to it changes something)."""
    for v in reversed(job.versions):
        if v.stable and v.spec != current_spec:
            return v.version
    return None


def retire_surplus(o: Observed, dep: Deployment, epoch: int) -> list[c.Command]:
    """Every replica is current: the surge replicas retire once the ones that stay are all ready, and the
    deployment's surge drops to 0 so that the scheduler does not refill their slots."""
    extra = [p for p in o.surplus if not p.retiring_at]
    if not extra or [p for p in o.current if p not in o.ready and p not in o.surplus]:
        return []
    return [c.Retire(epoch=epoch, placements=[p.id for p in extra],
                     reason=f"deploy of version {o.version} done: extra replicas retire"),
            c.SetDeployment(epoch=epoch, job=o.name, deployment={**to_wire(dep), "surge": 0})]


def next_batch(o: Observed, epoch: int) -> Step:
    """Outdated replicas not serving retire at once; the next batch waits for the previous one to be ready."""
    idle = [p for p in o.outdated if p.health != "healthy" and not p.retiring_at]
    now: list[c.Command] = []
    if idle:
        now.append(c.Retire(epoch=epoch, placements=[p.id for p in idle],
                            reason=f"deploy of version {o.version} (not serving)"))
    if o.retiring or any(p not in o.ready for p in o.current):
        return Step(now)
    budget = o.update.max_unavailable + o.published - o.want  # surge replicas serving add to it
    candidates = [(p, f"deploy of version {o.version}") for p in sorted(o.outdated, key=lambda p: p.id)
                  if p not in idle]
    return Step(now, batch=Batch(candidates, budget))
