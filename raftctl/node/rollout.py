"""Rolling deploys and drains: retire placements in batches within a budget.

The seed's sequence, per batch: unpublish (``retire``) -> wait the drain delay
-> stop (the agent runs the pre-stop hook, SIGTERM, grace, SIGKILL) -> the
scheduler starts the replacement (new version, or another machine for a drain)
-> it turns healthy and is published -> it stays healthy for ``min_healthy`` ->
next batch. A deploy that is not done by its deadline fails and, with
``auto_revert``, rolls back to the last stable version. A drain never takes
more of a job away than ``disruption.max_unavailable``, counted across all
draining machines; past the drain deadline the rest is forced.

``decide`` is pure; :class:`RolloutController` is the thin leader-side driver.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raftctl.node.leader import every
from raftctl.statemachine import commands as c

log = logging.getLogger("raftctl.rollout")


@dataclass
class Decision:
    commands: list[c.Command] = field(default_factory=list)
    held: str | None = None          # why retirements wait (shown in events and job status)


def _spec_of(job: dict[str, Any], version: int) -> dict[str, Any] | None:
    return next((v["spec"] for v in job["versions"] if v["version"] == version), None)


def _last_stable(job: dict[str, Any], current_spec: dict[str, Any]) -> int | None:
    for v in reversed(job["versions"]):
        if v.get("stable") and v["spec"] != current_spec:
            return v["version"]
    return None


def decide(job: dict[str, Any], placements: list[dict[str, Any]], machines: dict[str, dict],
           deployment: dict[str, Any] | None, published: int, now: int, epoch: int) -> Decision:
    """What to do next for one job (pure)."""
    out = Decision()
    if job["status"] != "running":
        return out
    spec = _spec_of(job, job["version"]) or {}
    upd = spec["update"]
    want = job["replicas"]
    live = [p for p in placements if p["desired"] == "run" and p["state"] not in ("lost", "stopped")]
    outdated = [p for p in live if _spec_of(job, p["version"]) != spec]
    current = [p for p in live if p not in outdated]
    ready = [p for p in current if p["health"] == "healthy" and p["state"] == "running" and not p.get("retiring_at")
             and now - (p.get("healthy_at") or now) >= upd["min_healthy_ms"]]
    draining = [p for p in live if p not in outdated and machines.get(p["machine"], {}).get("drain")]

    # 1. retired placements whose drain delay is over are stopped
    stop = [p for p in live if p.get("retiring_at") and now - p["retiring_at"] >= upd["drain_delay_ms"]]
    if stop:
        out.commands.append(c.Plan(epoch=epoch, place=[], stop=[
            {"placement": p["id"], "reason": p.get("reason") or "retired"} for p in stop]))

    # 2. the deployment record: start, finish, fail, revert
    dep = deployment if deployment and deployment.get("version") == job["version"] else None
    if outdated and dep is None:
        surge = max(upd["canary"], upd["max_surge"])
        dep = {"job": job["name"], "version": job["version"], "status": "running", "started_at": now,
               "deadline": now + upd["deadline_ms"], "total": len(outdated), "surge": surge,
               "canary": upd["canary"], "promoted": upd["canary"] == 0}
        how = (f"{upd['canary']} canaries first, then " if upd["canary"] else "") + \
            f"{upd['max_unavailable']} at a time" + (f", {upd['max_surge']} extra" if upd["max_surge"] else "")
        out.commands.append(c.SetDeployment(epoch=epoch, job=job["name"], deployment=dep,
                                            message=f"deploy of {job['name']} version {job['version']} started: "
                                                    f"{len(outdated)} replicas to replace, {how}"))
        return out
    surplus = [p for p in current if p["replica"] >= want]
    if dep is not None and dep["status"] == "running":
        canaries_ready = [p for p in ready if p["replica"] >= want]
        waiting_promotion = not dep.get("promoted") and len(canaries_ready) >= dep.get("canary", 0)
        if not dep.get("promoted") and waiting_promotion and upd["auto_promote"]:
            out.commands.append(c.SetDeployment(epoch=epoch, job=job["name"], deployment={**dep, "promoted": True},
                                                message=f"{len(canaries_ready)} canaries of {job['name']} version "
                                                        f"{job['version']} healthy: promoted automatically"))
            return out
        if not outdated and not surplus and len(ready) >= want:
            done = {**dep, "status": "successful", "finished_at": now}
            out.commands.append(c.SetDeployment(epoch=epoch, job=job["name"], deployment=done,
                                                message=f"deploy of {job['name']} version {job['version']} succeeded"))
            return out
        if now > dep["deadline"] and not waiting_promotion:
            back = _last_stable(job, spec) if upd["auto_revert"] else None
            failed = {**dep, "status": "reverted" if back else "failed", "finished_at": now,
                      "reason": f"not healthy by the deadline ({upd['deadline_ms'] // 1000}s)"}
            msg = f"deploy of {job['name']} version {job['version']} failed: not healthy by its deadline"
            if back:
                msg += f"; rolling back to version {back}"
            out.commands.append(c.SetDeployment(epoch=epoch, job=job["name"], deployment=failed, message=msg))
            if back:
                out.commands.append(c.RollbackJob(name=job["name"], version=back))
            return out

    # 3. start the next batch when the previous one is healthy, within the budget
    retiring = [p for p in live if p.get("retiring_at")]
    candidates: list[tuple[dict, str]] = []
    budget = 0
    if dep is not None and dep["status"] == "running" and not dep.get("promoted"):
        return out  # canaries run beside the old version until promoted
    if not outdated and surplus and dep is not None and dep["status"] == "running":
        extra = [p for p in surplus if not p.get("retiring_at")]
        if extra and not [p for p in current if p not in ready and p not in surplus]:
            out.commands.append(c.Retire(epoch=epoch, placements=[p["id"] for p in extra],
                                         reason=f"deploy of version {job['version']} done: extra replicas retire"))
            # no more extra slots: the scheduler must not refill them
            out.commands.append(c.SetDeployment(epoch=epoch, job=job["name"], deployment={**dep, "surge": 0}))
        return out
    if outdated and dep is not None and dep["status"] == "running":
        # outdated replicas that are not serving cost nothing to replace: retire them at once
        idle = [p for p in outdated if p["health"] != "healthy" and not p.get("retiring_at")]
        if idle:
            out.commands.append(c.Retire(epoch=epoch, placements=[p["id"] for p in idle],
                                         reason=f"deploy of version {job['version']} (not serving)"))
        unready_current = [p for p in current if p not in ready]
        if not retiring and not unready_current:
            budget = upd["max_unavailable"] + published - want  # surge replicas add to it
            candidates = [(p, f"deploy of version {job['version']}") for p in sorted(outdated, key=lambda p: p["id"])
                          if p not in idle]
    if draining and not candidates:
        deadline_passed = any(machines[p["machine"]]["drain"].get("deadline") and
                              now > machines[p["machine"]]["drain"]["deadline"] for p in draining)
        if deadline_passed:
            budget = len(draining)
        else:
            budget = spec["disruption"]["max_unavailable"] - max(0, want - published)
        candidates = [(p, f"machine {p['machine']} draining") for p in sorted(draining, key=lambda p: p["id"])
                      if not p.get("retiring_at")]
        if candidates and budget <= 0:
            out.held = (f"drain held back: job {job['name']} is at its disruption budget "
                        f"(max_unavailable {spec['disruption']['max_unavailable']}, "
                        f"{want - published} of {want} replicas unavailable)")
    take = [p for p, _ in candidates[:max(0, budget)] if not p.get("retiring_at")]
    if take:
        out.commands.append(c.Retire(epoch=epoch, placements=[p["id"] for p in take],
                                     reason=dict((p["id"], why) for p, why in candidates)[take[0]["id"]]))
    return out


class RolloutController:
    """Runs ``decide`` for every job on the leader, on changes and every 200 ms."""

    def __init__(self, replica: Any, epoch: int) -> None:
        self.replica = replica
        self.epoch = epoch
        self.held: dict[str, str] = {}

    async def run(self) -> None:
        await every(0.2, self.tick, "rollout")

    async def tick(self) -> None:
        now = int(time.time() * 1000)

        def snapshot(s: Any) -> list[tuple]:
            out = []
            for name, job in s.jobs.items():
                service = _spec_of(job, job["version"]) or {}
                published = len(s.discovery.get(service.get("service", name), {}).get("endpoints", {}))
                out.append((job, [dict(p) for p in s.job_placements(name)], s.deployments.get(name), published))
            return out
        rows = self.replica.read(snapshot)
        machines = self.replica.read(lambda s: dict(s.machines))
        for job, placements, dep, published in rows:
            d = decide(job, placements, machines, dep, published, now, self.epoch)
            if d.held and self.held.get(job["name"]) != d.held:
                log.warning(d.held)
                await self.replica.propose(c.SetDeployment(
                    epoch=self.epoch, job=job["name"],
                    deployment={**(dep or {}), "job": job["name"], "held": d.held}, message=d.held))
            if d.held:
                self.held[job["name"]] = d.held
            else:
                self.held.pop(job["name"], None)
            for cmd in d.commands:
                res = await self.replica.propose(cmd)
                if not res.ok:
                    log.info("rollout command for %s rejected: %s", job["name"], res.error)
                    break

    def status(self) -> dict[str, Any]:
        return {"held": dict(self.held)}
