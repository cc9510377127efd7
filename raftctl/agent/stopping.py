"""Stopping containers: the graceful stop, its bound, and the escalation when it fails or hangs.

The first attempt at stopping a container runs its pre-stop hook (if it runs and has one), sends SIGTERM, waits
``grace_s`` and then SIGKILLs (the driver's ``stop``), removes the container and checks it is gone. An attempt
that fails stays recorded; one still running past its bound (grace + hook timeout + slack) is presumed hung. The
agent's level-triggered pass (``converge.plan``, fed ``in_flight()``) then stops the container again, and every
later attempt is SIGKILL at once. A stop that succeeded forgets the container and reports it "stopped"; a failed
attempt is forgotten once the container it was stopping is gone (``forget_gone``).

Time is read only from the injected clock (when an attempt started, how long it has run); the driver calls are
bounded by ``call_driver``.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, Callable

from raftctl.agent.converge import StopInFlight
from raftctl.agent.runtime.base import Driver, Observed, RuntimeError_
from raftctl.agent.supervisor import DRIVER_CALL_S, Supervised, update
from raftctl.agent.supervisor import call_driver as _call
from raftctl.clock import Clock
from raftctl.statemachine.records import JobSpec, PreStop, ReportUpdate, seconds

log = logging.getLogger("raftctl.agent")

STOP_GRACE_S = 10.0     # SIGTERM to SIGKILL
STOP_SLACK_S = 15.0     # a stop attempt running past its grace (+ pre-stop hook) by this much is presumed hung
HOOK_SLACK_S = 5.0      # the pre-stop hook's driver call is abandoned this long after the hook's own timeout
KILL_WAIT_S = 1.0       # after a SIGKILL, how long the driver's stop waits for the exit
STOP_CALL_SLACK_S = 10.0  # the driver's stop call is abandoned this long after its grace


@dataclass
class StopAttempt:
    """One attempt at stopping a container; kept after a failure so the next attempt escalates."""
    task: asyncio.Task[None]
    started: float       # the clock's monotonic seconds
    bound: float         # seconds past which the attempt is presumed hung
    attempt: int         # 0: pre-stop hook, SIGTERM, grace, SIGKILL; 1+: SIGKILL at once


def pre_stop_hook(placement: dict[str, Any] | None) -> PreStop | None:
    """The placement's pre-stop hook (``spec.lifecycle.pre_stop``), or None (none, or no spec)."""
    spec: JobSpec | None = (placement or {}).get("spec")
    return spec.lifecycle.pre_stop if spec is not None else None


class Stopper:
    """The stops of one agent: ``containers`` is the agent's own map of supervised containers (a stop that
    succeeded removes its entry); ``report`` takes the "stopped" reports."""

    def __init__(self, driver: Driver, containers: dict[str, Supervised], report: Callable[[ReportUpdate], None],
                 clock: Clock, *, grace_s: float = STOP_GRACE_S, slack_s: float = STOP_SLACK_S) -> None:
        self.driver = driver
        self.containers = containers
        self.report = report
        self.clock = clock
        self.grace_s = grace_s
        self.slack_s = slack_s
        self.attempts: dict[str, StopAttempt] = {}   # stops in flight or failed (until the container is gone)
        self.retries = 0                              # stops started again after one failed or hung

    def in_flight(self) -> dict[str, StopInFlight]:
        """The attempts still running, with how long each has run and its bound (for ``converge.plan``)."""
        now = self.clock.monotonic()
        return {cid: StopInFlight(now - a.started, a.bound) for cid, a in self.attempts.items() if not a.task.done()}

    def forget_gone(self, existing: Set[str]) -> None:
        """Forget the failed attempts whose container is gone since (neither the driver nor the agent has it)."""
        for cid in [c for c, a in self.attempts.items()
                    if a.task.done() and c not in existing and c not in self.containers]:
            del self.attempts[cid]

    def stop(self, cid: str, placement: dict[str, Any] | None) -> None:
        """Stop ``cid`` (no attempt in flight): the first attempt is graceful, one after a failure is SIGKILL."""
        if cid in self.attempts:
            log.warning("%s is still there after a failed stop: stopping it again", cid)
        elif cid not in self.containers:
            log.warning("%s runs but is not supervised here: stopping it", cid)
        self._begin(cid, placement)

    def retry(self, cid: str, placement: dict[str, Any] | None) -> None:
        """The attempt in flight for ``cid`` ran past its bound: abandon it and SIGKILL."""
        a = self.attempts[cid]
        log.warning("stop of %s has run %.1fs, past its %.0fs bound: stopping it again with SIGKILL",
                    cid, self.clock.monotonic() - a.started, a.bound)
        a.task.cancel()
        self._begin(cid, placement)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [a.task for a in self.attempts.values()]

    def _begin(self, cid: str, placement: dict[str, Any] | None) -> None:
        prev = self.attempts.get(cid)
        attempt = prev.attempt + 1 if prev else 0
        if attempt:
            self.retries += 1
        sup = self.containers.get(cid)
        pre = pre_stop_hook(placement or (sup.placement if sup else None)) if attempt == 0 else None
        bound = self.grace_s + self.slack_s + (seconds(pre.timeout) if pre else 0.0)
        task = asyncio.create_task(self._run(cid, placement, attempt, pre), name=f"stop-{cid}")
        self.attempts[cid] = StopAttempt(task=task, started=self.clock.monotonic(), bound=bound, attempt=attempt)

    async def _run(self, cid: str, placement: dict[str, Any] | None, attempt: int,
                   pre: PreStop | None) -> None:
        sup = self.containers.get(cid)
        if sup is not None:
            await self._end_supervision(cid, sup)
        try:
            if attempt == 0:
                if pre and sup is not None and sup.state == "running":
                    hook_s = seconds(pre.timeout)
                    code, _ = await _call(self.driver.exec, cid, list(pre.exec), hook_s, bound=hook_s + HOOK_SLACK_S)
                    log.info("%s pre-stop hook exited %s", cid, code)
                await _call(self.driver.stop, cid, self.grace_s, bound=self.grace_s + STOP_CALL_SLACK_S)
            else:
                log.warning("stopping %s again (attempt %d): SIGKILL", cid, attempt + 1)
                await _call(self.driver.kill, cid, signal.SIGKILL)
                await _call(self.driver.stop, cid, KILL_WAIT_S)
            await _call(self.driver.remove, cid)
            obs: Observed = await _call(self.driver.status, cid)
            if obs.state == "running":
                raise RuntimeError_(f"still running (pid {obs.pid}) after stop and remove")
        except Exception as exc:
            log.warning("stopping %s (attempt %d) failed: %s; the next pass stops it again", cid, attempt + 1, exc)
            return   # the attempt stays recorded: the next pass sees the container and escalates
        self.attempts.pop(cid, None)
        if self.containers.get(cid) is sup:
            self.containers.pop(cid, None)
        if placement is not None:
            self.report(update(cid, "stopped", reason=placement.get("reason") or "stopped"))

    @staticmethod
    async def _end_supervision(cid: str, sup: Supervised) -> None:
        """Mark the container stopping and end its supervisor, after a start in flight returned (bounded): a
        stop running beside the start would find nothing to stop, and the start would then leave it running."""
        sup.stopping = True
        try:
            await asyncio.wait_for(sup.start_lock.acquire(), DRIVER_CALL_S)
            locked = True
        except asyncio.TimeoutError:
            log.warning("stopping %s: its start has not returned in %.0fs; stopping anyway", cid, DRIVER_CALL_S)
            locked = False
        try:
            if sup.task:
                sup.task.cancel()
        finally:
            if locked:
                sup.start_lock.release()
