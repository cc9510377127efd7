"""Rolling deploys and drains: retire placements in batches within a budget.

The seed's sequence, per batch: unpublish (``retire``) -> wait the drain delay
-> stop (the agent runs the pre-stop hook, SIGTERM, grace, SIGKILL) -> the
scheduler starts the replacement (new version, or another machine for a drain)
-> it turns healthy and is published -> it stays healthy for ``min_healthy`` ->
next batch. A deploy that is not done by its deadline fails and, with
``auto_revert``, rolls back to the last stable version. A drain never takes
more of a job away than ``disruption.max_unavailable``, counted across all
draining machines; past the drain deadline the rest is forced.

One pure function per concern, each observe -> diff over the same :class:`~.view.Observed`:
:mod:`.deploy` (the deployment record, canaries, batches of outdated replicas, surge, deadline, rollback),
:mod:`.drain` (draining machines within the disruption budget) and :mod:`.retire` (a batch leaves discovery;
retired placements stop after the drain delay). ``decide`` composes them for one job; :class:`RolloutController`
is the thin leader-side driver. Level-triggered: every pass starts from the committed state alone, so a leader may
die at any line and the next one picks up from the log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from raftctl.clock import Clock
from raftctl.node.leader import every
from raftctl.node.rollout import deploy, drain, retire
from raftctl.node.rollout.view import observe
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import Deployment, Job, Machine, Placement, to_wire

log = logging.getLogger("raftctl.rollout")


@dataclass
class Decision:
    commands: list[c.Command] = field(default_factory=list)
    held: str | None = None          # why retirements wait (shown in events and job status)


def decide(job: Job, placements: list[Placement], machines: Mapping[str, Machine],
           deployment: Deployment | None, published: int, now: int, epoch: int) -> Decision:
    """What to do next for one job (pure): stop what is due, move the deploy on, then retire one batch (the
    deploy's, or else the drain's)."""
    out = Decision()
    if job.status != "running":
        return out
    o = observe(job, placements, machines, deployment, published, now)
    out.commands += retire.stop(o, epoch)
    dep = deploy.step(o, epoch)
    out.commands += dep.commands
    if dep.final:
        return out
    batch = dep.batch
    if o.draining and not batch.candidates:
        batch, out.held = drain.batch(o)
    out.commands += retire.retire(batch, epoch)
    return out


class RolloutController:
    """Runs ``decide`` for every job on the leader, on changes and every 200 ms."""

    def __init__(self, replica: Any, epoch: int, clock: Clock | None = None) -> None:
        self.replica = replica
        self.epoch = epoch
        self.clock: Clock = clock if clock is not None else replica.clock   # Leadership passes (replica, epoch)
        self.held: dict[str, str] = {}

    async def run(self) -> None:
        await every(0.2, self.tick, "rollout", self.clock)

    async def tick(self) -> None:
        now = self.clock.now_ms()

        def snapshot(s: Any) -> list[tuple[Job, list[Placement], Deployment | None, int]]:
            out = []
            for name, job in s.jobs.items():
                spec = job.current_spec
                service = spec.service_name if spec is not None else name
                published = len(s.discovery.get(service, {}).get("endpoints", {}))
                out.append((job, s.job_placements(name), s.deployments.get(name), published))
            return out
        rows = self.replica.read(snapshot)
        machines = self.replica.read(lambda s: dict(s.machines))
        for job, placements, dep, published in rows:
            d = decide(job, placements, machines, dep, published, now, self.epoch)
            if d.held and self.held.get(job.name) != d.held:
                log.warning(d.held)
                await self.replica.propose(c.SetDeployment(
                    epoch=self.epoch, job=job.name,
                    deployment={**(to_wire(dep) if dep is not None else {}), "job": job.name, "held": d.held},
                    message=d.held))
            if d.held:
                self.held[job.name] = d.held
            else:
                self.held.pop(job.name, None)
            for cmd in d.commands:
                res = await self.replica.propose(cmd)
                if not res.ok:
                    log.info("rollout command for %s rejected: %s", job.name, res.error)
                    break

    def status(self) -> dict[str, Any]:
        return {"held": dict(self.held)}
