"""The agent's Prometheus metrics (GET /metrics on its HTTP endpoint), one registry per agent.

Counters and the health-check histogram are fed by the agent loop as things happen; containers by
state and per-container CPU/memory are collected at scrape time from what the loop already holds
(the stats pass keeps each container's last cgroup/psutil figures), so a scrape never calls the runtime.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

HEALTH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AgentMetrics:
    def __init__(self, agent: Any) -> None:
        self.registry = CollectorRegistry()
        self.restarts = Counter("raftctl_agent_container_restarts", "Container restarts by the agent's supervisor",
                                ["job"], registry=self.registry)
        self.oom_kills = Counter("raftctl_agent_oom_kills", "Containers that ended OOM-killed", ["job"],
                                 registry=self.registry)
        self.exits = Counter("raftctl_agent_container_exits", "Containers that ended on their own (any exit)",
                             ["job"], registry=self.registry)
        self.disk_evictions = Counter("raftctl_agent_disk_evictions", "Containers evicted for disk pressure "
                                      "(the largest writers, when free space fell below --disk-reserve)", ["job"],
                                      registry=self.registry)
        self.health = Histogram("raftctl_agent_health_check_seconds", "Health-check latency", ["type", "result"],
                                buckets=HEALTH_BUCKETS, registry=self.registry)
        self.registry.register(_ContainerCollector(agent))

    def exited(self, job: str, oom: bool) -> None:
        self.exits.labels(job).inc()
        if oom:
            self.oom_kills.labels(job).inc()

    def disk_evicted(self, job: str) -> None:
        self.disk_evictions.labels(job).inc()

    def restarted(self, job: str) -> None:
        self.restarts.labels(job).inc()

    def health_checked(self, kind: str, ok: bool, seconds: float) -> None:
        self.health.labels(kind, "ok" if ok else "failed").observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _ContainerCollector:
    """Scrape-time figures from the agent's supervised containers."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        containers = list(self.agent.containers.items())
        by_state: dict[str, int] = {}
        for _, sup in containers:
            by_state[sup.state] = by_state.get(sup.state, 0) + 1
        g = GaugeMetricFamily("raftctl_agent_containers", "Supervised containers by state", labels=["state"])
        for state in sorted(set(by_state) | {"running"}):
            g.add_metric([state], by_state.get(state, 0))
        yield g
        if getattr(self.agent, "event_loop", None) is not None:
            running = GaugeMetricFamily("raftctl_agent_event_loop_info", "The event loop this agent's process runs "
                                        "(RAFTCTL_EVENT_LOOP: uvloop, the default, or asyncio)", labels=["loop"])
            running.add_metric([self.agent.event_loop], 1)
            yield running
        disk = getattr(self.agent, "disk", None)
        if disk is not None and disk.last_fs is not None:
            free = GaugeMetricFamily("raftctl_agent_disk_free_bytes", "Free space on the data dir's filesystem at "
                                     "the last disk pressure check")
            free.add_metric([], disk.last_fs.free)
            total = GaugeMetricFamily("raftctl_agent_disk_total_bytes", "Size of the data dir's filesystem")
            total.add_metric([], disk.last_fs.total)
            yield free
            yield total
        labels = ["placement", "job"]
        cpu = CounterMetricFamily("raftctl_agent_container_cpu_seconds", "Container CPU time (cgroup or psutil)",
                                  labels=labels)
        mem = GaugeMetricFamily("raftctl_agent_container_memory_bytes", "Container memory in use", labels=labels)
        limit = GaugeMetricFamily("raftctl_agent_container_memory_limit_bytes", "Container memory limit (0: none)",
                                  labels=labels)
        pids = GaugeMetricFamily("raftctl_agent_container_pids", "Processes in the container", labels=labels)
        # Only grows while the agent supervises the placement: a counter (it starts again with the agent).
        # Not `..._restart_count`: a _count suffix is reserved for histograms and summaries.
        written = GaugeMetricFamily("raftctl_agent_container_disk_bytes", "What the container holds in /data and "
                                    "its root's writable layer, at the last disk pressure check", labels=labels)
        usage = disk.last_usage if disk is not None else {}
        restarts = CounterMetricFamily("raftctl_agent_placement_restarts",
                                       "Restarts of this placement's container since the agent started supervising it",
                                       labels=labels)
        for cid, sup in sorted(containers):
            lv = [cid, str(sup.placement.get("job", ""))]
            restarts.add_metric(lv, sup.restarts)
            if cid in usage:
                written.add_metric(lv, usage[cid].bytes)
            st = getattr(sup, "stats", None)
            if st is None or sup.state != "running":
                continue
            cpu.add_metric(lv, st["cpu_usage_ns"] / 1e9)
            mem.add_metric(lv, st["memory_bytes"])
            limit.add_metric(lv, st["memory_limit"])
            pids.add_metric(lv, st["pids"])
        yield from (cpu, mem, limit, pids, restarts, written)
