"""GET /metrics: Prometheus text format, one registry per replica."""
from __future__ import annotations

import asyncio
import sys
from bisect import bisect_left
from typing import Any, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from raftctl.node.efficiency import prometheus_families
from raftctl.node.raft import frames
from raftctl.node.http import GUARD, REPLICA, perm
from raftctl.node.scheduling import PASS_BURST, PASS_RATE


class ApiMetrics:
    """Request counts and latency per route and status code (fed by the API middleware on every request).

    Kept as plain numbers, written by the event loop only and turned into the Prometheus families at a scrape
    (``collect``): prometheus_client's labels() and locked children cost a fifth of a discovery lookup."""

    BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts: dict[tuple[str, int], int] = {}              # (route, code) -> requests
        self.latency: dict[str, list[float]] = {}                  # route -> per-bucket counts, +Inf, then the sum
        registry.register(self)

    def observe(self, route: str, code: int, seconds: float) -> None:
        key = (route, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = [0.0] * (len(self.BUCKETS) + 2)
        hist[bisect_left(self.BUCKETS, seconds)] += 1   # le: the first bound >= seconds, else +Inf
        hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("raftctl_api_requests", "API requests", labels=["route", "code"])
        for (route, code), n in list(self.counts.items()):
            requests.add_metric([route, str(code)], n)
        yield requests
        latency = HistogramMetricFamily("raftctl_api_request_seconds", "API request latency", labels=["route"])
        for route, hist in list(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, hits in zip([*map(floatToGoString, self.BUCKETS), "+Inf"], hist[:-1]):
                cumulative += hits
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, hist[-1])
        yield latency


def registry_for(replica: object) -> tuple[CollectorRegistry, ApiMetrics]:
    reg = getattr(replica, "_metrics_registry", None)
    if reg is None:
        reg = CollectorRegistry()
        reg.register(ReplicaCollector(replica))
        replica._metrics_registry = reg  # type: ignore[attr-defined]
        replica._api_metrics = ApiMetrics(reg)  # type: ignore[attr-defined]
    return reg, replica._api_metrics  # type: ignore[attr-defined]


class ReplicaCollector:
    def __init__(self, replica: Any) -> None:
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        r = self.replica
        if getattr(r, "raft", None) is None:
            return
        st = r.status()
        for name, value, doc in (
            ("raftctl_raft_term", st["term"] or 0, "Current Raft term"),
            ("raftctl_raft_commit_index", st["commit_index"] or 0, "Raft commit index"),
            ("raftctl_raft_applied_index", st["applied_index"] or 0, "Raft last applied index"),
            ("raftctl_raft_log_entries", st["log_len"] or 0, "Entries in the Raft log"),
            ("raftctl_raft_is_leader", 1 if st["state"] == "leader" else 0, "1 on the leader"),
            ("raftctl_raft_state_changes", r.leader_changes, "Raft role changes seen by this replica"),
            ("raftctl_state_index", st["index"], "State machine index"),
            ("raftctl_proposer_entries", r.proposer.entries if r.proposer else 0, "Log entries proposed here"),
            ("raftctl_proposer_commands", r.proposer.commands if r.proposer else 0, "Commands proposed here"),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        admitting = r.runner.admitting if getattr(r, "runner", None) is not None else None
        if admitting is not None:
            guard = r.runner.app.get(GUARD) if r.runner.app is not None else None
            for family, name, value, doc in (
                    (GaugeMetricFamily, "raftctl_api_connections", admitting.live, "API connections open on this replica"),
                    (GaugeMetricFamily, "raftctl_api_connections_limit", admitting.limit, "Open API connections "
                     "allowed (--max-connections; at it idle ones are closed to make room, else a new one is answered "
                     "503 overloaded and closed)"),
                    (GaugeMetricFamily, "raftctl_api_connections_reserved_slots", admitting.reserve, "Of the limit, "
                     "the slots kept for admin and operator tokens (--reserved-connections)"),
                    (CounterMetricFamily, "raftctl_api_connections_refused", admitting.refused,
                     "API connections refused over the limit"),
                    (CounterMetricFamily, "raftctl_api_connections_evicted", admitting.evicted, "Idle keep-alive API "
                     "connections closed to make room for a new one at the limit"),
                    (CounterMetricFamily, "raftctl_api_connections_reserved", admitting.reserved, "API connections "
                     "admitted into the slots kept for admin and operator tokens"),
                    (CounterMetricFamily, "raftctl_api_reserved_refused", guard.reserved_refused if guard else 0,
                     "Requests refused 503 overloaded on a reserved connection (their token not an admin's or "
                     "operator's)")):
                metric = family(name, doc)
                metric.add_metric([], value)
                yield metric
        raft = r.raft
        for name, value, doc in (
                ("raftctl_raft_leader_batches", raft.appends_batched, "Batches of proposals this replica appended "
                 "while leading, one fdatasync each (group commit, replication.py)"),
                ("raftctl_raft_leader_batch_entries", raft.entries_batched, "Log entries in those batches"),
                ("raftctl_raft_leader_held_ticks", raft.appends_held, "Leader ticks that held the queued proposals "
                 "for the next batch (RAFTCTL_GROUP_COMMIT_MS after a batch of two or more entries)")):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter
        dropped = CounterMetricFamily("raftctl_raft_port_dropped", "Raft connections this process dropped "
                                      "(frames.py): before the peer proved the cluster secret, a frame announced over "
                                      "the bound, one that did not decrypt, or the oldest of too many waiting; at "
                                      "any time, a negative frame length",
                                      labels=["reason"])
        for reason, n in frames.DROPPED.items():
            dropped.add_metric([reason], n)
        yield dropped
        lag = getattr(r, "loop_lag", None)
        if lag is not None:
            late = HistogramMetricFamily("raftctl_event_loop_lag_seconds", "How much later than asked the replica's "
                                         "event loop woke a task that asks every 0.1 s (the loop held: a long "
                                         "computation, the GIL, the GC, no CPU)")
            late.add_metric([], lag.cumulative(), lag.sum)
            yield late
            worst = GaugeMetricFamily("raftctl_event_loop_lag_max_seconds", "The longest such lag since start")
            worst.add_metric([], lag.worst)
            yield worst
        stats = getattr(r, "gc_stats", None)
        if stats is not None:
            runs = CounterMetricFamily("raftctl_gc_collections", "Cyclic GC collections in this replica's process",
                                       labels=["generation"])
            spent = CounterMetricFamily("raftctl_gc_seconds", "Time spent in cyclic GC collections (wall time: "
                                        "with the process waiting for a CPU meanwhile)", labels=["generation"])
            cpu = CounterMetricFamily("raftctl_gc_cpu_seconds", "CPU time the collecting thread spent in cyclic GC "
                                      "collections", labels=["generation"])
            longest = GaugeMetricFamily("raftctl_gc_longest_seconds", "The longest single cyclic GC collection "
                                        "since start (every thread of the process, Raft's too, waited for it)",
                                        labels=["generation"])
            for gen in range(3):
                runs.add_metric([str(gen)], stats.collections[gen])
                spent.add_metric([str(gen)], stats.seconds[gen])
                cpu.add_metric([str(gen)], stats.cpu_seconds[gen])
                longest.add_metric([str(gen)], stats.longest[gen])
            yield runs
            yield spent
            yield cpu
            yield longest
            switch = GaugeMetricFamily("raftctl_gil_switch_interval_seconds", "How long a computing thread of this "
                                       "replica's process keeps the GIL when the event loop waits for it (gil.py)")
            switch.add_metric([], sys.getswitchinterval())
            yield switch
        if getattr(r, "event_loop", None) is not None:
            running = GaugeMetricFamily("raftctl_event_loop_info", "The event loop this replica's process runs "
                                        "(aio.py: uvloop by default, asyncio with RAFTCTL_EVENT_LOOP=asyncio)",
                                        labels=["loop"])
            running.add_metric([r.event_loop], 1)
            yield running
        counts = r.read(lambda s: (len(s.jobs), len(s.placements), len(s.machines)))
        for name, value in zip(("raftctl_jobs", "raftctl_placements", "raftctl_machines"), counts):
            g = GaugeMetricFamily(name, f"Number of {name.split('_')[1]} in the state")
            g.add_metric([], value)
            yield g
        def by_state(s: Any) -> tuple[dict[str, int], dict[tuple[str, str], int], int, dict[str, int], int]:
            machines: dict[str, int] = {}
            for m in s.machines.values():
                state = s.machine_state(m)
                machines[state] = machines.get(state, 0) + 1
            placements = dict(s.placement_counts)   # kept at apply time (State.put_placement)
            pending = sum(1 for j in s.jobs.values() if j.pending_reason)
            deploys: dict[str, int] = {}
            for d in s.deployments.values():
                deploys[d.status] = deploys.get(d.status, 0) + 1
            endpoints = sum(len(v["endpoints"]) for v in s.discovery.values())
            return machines, placements, pending, deploys, endpoints
        machines, placements, pending, deploys, endpoints = r.read(by_state)
        g = GaugeMetricFamily("raftctl_machines_by_state", "Machines by state", labels=["state"])
        for k, v in sorted(machines.items()):
            g.add_metric([k], v)
        yield g
        g = GaugeMetricFamily("raftctl_placements_by_state", "Placements by state and health", labels=["state", "health"])
        for (st, h), v in sorted(placements.items()):
            g.add_metric([st, h], v)
        yield g
        for name, value, doc in (("raftctl_jobs_pending", pending, "Jobs with replicas that cannot be placed"),
                                 ("raftctl_discovery_endpoints", endpoints, "Published discovery endpoints")):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        g = GaugeMetricFamily("raftctl_deployments", "Deployments by status", labels=["status"])
        for k, v in sorted(deploys.items()):
            g.add_metric([k], v)
        yield g
        # collected on a worker thread: leadership may end meanwhile (failover None), so each is read once
        leadership = r.leadership
        lead = leadership.status() if leadership is not None and leadership.active else {}
        fo = lead.get("failover")
        monitor = leadership.failover if leadership is not None else None
        if fo and monitor is not None:
            g = GaugeMetricFamily("raftctl_heartbeat_age_seconds", "Seconds since each machine's last heartbeat",
                                  labels=["machine"])
            for m, age in monitor.ages().items():
                g.add_metric([m], age)
            yield g
            g = GaugeMetricFamily("raftctl_failover_guard_active", "1 while the mass-loss guard rate-limits failover")
            g.add_metric([], 1 if fo["guard_active"] else 0)
            yield g
        sched = lead.get("SchedulerLoop")
        if sched:
            for key, doc in (("passes", "Scheduler passes"), ("placed", "Placements committed by this leader"),
                             ("rejected", "Plan items the state machine rejected"),
                             ("paced", f"Passes put off by the pass rate (a burst of {PASS_BURST:g}, then {PASS_RATE:g} a second)")):
                g = GaugeMetricFamily(f"raftctl_scheduler_{key}", doc)
                g.add_metric([], sched[key])
                yield g
        yield from prometheus_families(r)


@perm("read")
async def handler(request: web.Request) -> web.Response:
    """The scrape is collected on a worker thread, not on the event loop: at 10,000 machines it walks every
    placement and machine (the efficiency view alone ~1.3 s of CPU, the heartbeat ages 10,000 series), and on the
    loop that held the leader's heartbeats as long. The collectors read the state under its lock and take copies
    of what the loop changes (a dict copied in one C call: no "changed size during iteration")."""
    registry, _ = registry_for(request.app[REPLICA])
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
