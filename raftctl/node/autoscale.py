"""The autoscaler: replicas follow load (Kubernetes HPA's rule) between min and max.

Metrics live in the leader's memory, not in the log: agents report each
container's CPU utilisation (of its requested CPU, from cgroup stats) and
services push custom metrics (``POST /v1/metrics/{job}``, the value per
replica, e.g. requests/s). Every second, per job with ``autoscale``:
``desired = ceil(current x value / target)``, unchanged inside the tolerance
band, clamped to [min, max]; scale-ups wait for the cooldown since the last
change, scale-downs take the highest recommendation of the stabilisation
window. Every decision is a committed scale command whose reason is the event
(``cpu 0.92 > target 0.6: 3 -> 5``).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

from raftctl.clock import SYSTEM, Clock
from raftctl.errors import ValidationError
from raftctl.node.leader import every
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import Autoscale

log = logging.getLogger("raftctl.autoscale")
SAMPLE_WINDOW_MS = 15_000


@dataclass
class Verdict:
    desired: int | None
    reason: str


def recommend(auto: Autoscale, current: int, value: float | None) -> tuple[int, str]:
    """The HPA recommendation (pure)."""
    if value is None or current == 0:
        start = max(auto.min, current)
        return start, f"no {auto.metric} samples"
    target = auto.target
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0) or not math.isfinite(value):
        # a spec stored before targets were validated (NaN, 0, a string): hold, never raise every tick
        return current, f"{auto.metric} target {target!r} or value {value!r} is not a positive finite number"
    ratio = value / target
    if abs(ratio - 1.0) <= auto.tolerance:
        return current, f"{auto.metric} {value:.2f} within tolerance of target {auto.target:g}"
    desired = math.ceil(current * ratio)
    desired = max(auto.min, min(auto.max, desired))
    cmp = ">" if value > auto.target else "<"
    return desired, f"{auto.metric} {value:.2f} {cmp} target {auto.target:g}"


def decide(auto: Autoscale, current: int, value: float | None, history: list[tuple[int, int]],
           now: int, last_change: int | None) -> Verdict:
    """Scale to what, and why (pure). ``history``: (time ms, recommendation) of earlier passes."""
    rec, why = recommend(auto, current, value)
    if current < auto.min or current > auto.max:
        target = max(auto.min, min(auto.max, current))
        return Verdict(target, f"replicas {current} outside autoscale range {auto.min}..{auto.max}")
    if rec > current:
        if last_change is not None and now - last_change < auto.cooldown:
            return Verdict(None, why + " (cooling down)")
        return Verdict(rec, why)
    if rec < current:
        window = [r for t, r in history if now - t <= auto.stabilization] + [rec]
        stable = max(window)
        if stable >= current:
            return Verdict(None, why + " (stabilising before scaling down)")
        if last_change is not None and now - last_change < auto.cooldown:
            return Verdict(None, why + " (cooling down)")
        return Verdict(stable, why)
    return Verdict(None, why)


MEMORY_METRIC = "_memory_bytes"
"""The series of the agents' memory samples (the efficiency view's); cannot collide with a pushed custom metric
(those start with a letter)."""
SAMPLES_PER_SERIES = 2000
"""Most sources (placements, pushers) kept per (job, metric) series; the least recently heard from go first."""
METRICS_PER_JOB = 8
"""Most metric series one job may have (cpu and memory included); a further metric name is a 400."""
MAX_SAMPLES = 200_000
"""Most samples kept in all (one per source and series); past it the least recently updated series lose their
least recently heard-from sources."""


class Metrics:
    """The latest sample of each source (a placement, a pusher's ``source``) per (job, metric), kept on every
    replica but used by the leader: what the autoscaler (``value``) and the efficiency view (``latest_usage``) read
    is each source's latest sample in the window, so an older one is never kept. (Until session 18 each series was
    a deque of its last 2,000 samples, and at 10,000 machines the store sat at its total bound, so every sample a
    heartbeat carried dropped another: that drop was half of recording, 265 of the leader's 2,191 heartbeat
    samples in py-spy.) Bounded per series, per job and in total, so that what agents and metric pushers send
    cannot grow without bound. A sample added without a time is stamped with ``clock``'s wall milliseconds."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        # least recently updated series first; in each, source -> (ms, value), least recently heard from first
        self.samples: OrderedDict[tuple[str, str], dict[str, tuple[int, float]]] = OrderedDict()
        self.per_job: dict[str, int] = {}
        self.total = 0

    def add(self, job: str, metric: str, value: float, key: str = "", now: int | None = None) -> None:
        self._put((job, metric), key, self.clock.now_ms() if now is None else now, float(value))

    def add_usage(self, rows: list[tuple[str, str, float, float | None]]) -> None:
        """One machine's usage samples, ``(job, placement, cpu, memory or None)`` each, stamped with one clock
        reading (a heartbeat carries one per container: 20 ``add`` calls each reading the clock were a third of
        the 10,000-machine leader's heartbeat handler in py-spy)."""
        now, put = self.clock.now_ms(), self._put
        for job, placement, cpu, mem in rows:
            put((job, "cpu"), placement, now, cpu)
            if mem is not None:
                put((job, MEMORY_METRIC), placement, now, mem)

    def _put(self, series: tuple[str, str], key: str, now: int, value: float) -> None:
        job, metric = series
        sources = self.samples.get(series)
        if sources is None:
            if self.per_job.get(job, 0) >= METRICS_PER_JOB:
                raise ValidationError(f"job {job[:64]!r} already has {METRICS_PER_JOB} metrics; "
                                      f"{metric[:64]!r} would be one more", field="metric")
            sources = self.samples[series] = {}
            self.per_job[job] = self.per_job.get(job, 0) + 1
        else:
            self.samples.move_to_end(series)
        if sources.pop(key, None) is None:      # re-inserted last: the source heard from most recently
            if len(sources) >= SAMPLES_PER_SERIES:
                del sources[next(iter(sources))]
            else:
                self.total += 1
        sources[key] = (now, value)
        while self.total > MAX_SAMPLES:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        series, sources = next(iter(self.samples.items()))
        if sources:
            del sources[next(iter(sources))]
            self.total -= 1
        if not sources:
            del self.samples[series]
            self.per_job[series[0]] -= 1
            if not self.per_job[series[0]]:
                del self.per_job[series[0]]

    def value(self, job: str, metric: str, now: int, live: set[str] | None = None) -> float | None:
        """Mean over the window of each source's latest sample (per replica for cpu)."""
        latest = [v for key, (t, v) in list(self.samples.get((job, metric), {}).items())
                  if now - t <= SAMPLE_WINDOW_MS and (live is None or not key or key in live)]
        if not latest:
            return None
        return sum(latest) / len(latest)


class Autoscaler:
    """Runs ``decide`` for every autoscaled job on the leader, every second of ``clock``; the cooldown, the
    stabilisation window and the samples' window are measured on its wall milliseconds."""

    def __init__(self, replica: Any, epoch: int, clock: Clock | None = None) -> None:
        self.replica = replica
        self.epoch = epoch
        self.clock: Clock = clock if clock is not None else replica.clock   # Leadership passes (replica, epoch)
        self.history: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.last_change: dict[str, int] = {}
        self.last_reason: dict[str, str] = {}

    async def run(self) -> None:
        await every(1.0, self.tick, "autoscaler", self.clock)

    async def tick(self) -> None:
        now = self.clock.now_ms()

        def view(s: Any) -> list[tuple[str, Autoscale, int, set[str]]]:
            out = []
            for name, job in s.jobs.items():
                spec = job.current_spec
                if job.status == "running" and spec is not None and spec.autoscale is not None:
                    live = {p.id for p in s.job_placements(name) if p.desired == "run" and p.state == "running"}
                    out.append((name, spec.autoscale, job.replicas, live))
            return out
        for name, auto, current, live in self.replica.read(view):
            try:
                await self._tick_job(name, auto, current, live, now)
            except Exception:  # one job's odd spec must not starve the others of autoscaling
                log.exception("autoscale %s failed; the other jobs go on", name)

    async def _tick_job(self, name: str, auto: Autoscale, current: int, live: set[str], now: int) -> None:
        value = self.replica.metrics.value(name, auto.metric, now, live if auto.metric == "cpu" else None)
        v = decide(auto, current, value, self.history[name], now, self.last_change.get(name))
        rec, _ = recommend(auto, current, value)
        self.history[name] = [(t, r) for t, r in self.history[name] if now - t <= auto.stabilization] + [(now, rec)]
        self.last_reason[name] = v.reason
        if v.desired is None or v.desired == current:
            return
        reason = f"{v.reason}: {current} -> {v.desired}"
        res = await self.replica.propose(c.ScaleJob(name=name, replicas=v.desired, reason=reason))
        if res.ok:
            log.info("autoscale %s: %s", name, reason)
            self.last_change[name] = now

    def status(self) -> dict[str, Any]:
        return {"last_reason": dict(self.last_reason)}
