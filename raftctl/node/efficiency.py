"""GET /v1/efficiency: the efficiency view (raftctl.scheduler.efficiency) over this replica's state and the
agents' latest usage reports.

Usage reports (POST /v1/agent/stats) are forwarded to the leader and kept in its memory only, so a
follower forwards this read to the leader; with no leader known it answers from its own (usage-less)
samples and says so (``usage_from``).

The view is computed once per state change: :class:`ViewCache` keeps the last one, keyed by the state's index,
for at most ``MAX_AGE_S`` of the replica's clock, so repeated scrapes compute nothing and a read after a command
sees it. Usage samples arrive outside the log (every agent posts every 2 s: with many machines a new one lands
between any two scrapes, so keying on them would recompute on every scrape): a new sample, or one leaving the
window, shows in the view within ``MAX_AGE_S``.

The view is computed off the event loop (the route and GET /metrics run it on a worker thread): at 10,000
machines and 100,000 placements it costs ~1.3 s of CPU, which held the loop, heartbeats included, for that long at
every scrape. A /metrics scrape also reuses a costly view (``COSTLY_S`` or more) while it is younger than
``REUSE_FACTOR`` times its cost, whatever changed since, so a busy cluster's scrapes spend at most about a tenth
of a core on it; GET /v1/efficiency always answers the current index. Past that window a scrape still answers
with the view it has and starts a new one on a thread of its own (session 29: at 30,000 machines the view cost
~6 s of CPU, and a scrape of the loaded leader that waited for it timed out after 30 s).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Iterator

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from raftctl.clock import Clock
from raftctl.node.autoscale import MEMORY_METRIC, SAMPLE_WINDOW_MS
from raftctl.node.http import REPLICA, encode, forward_to_leader, perm, routes
from raftctl.scheduler.efficiency import Usage, efficiency

log = logging.getLogger("raftctl.efficiency")


def latest_usage(samples: dict[tuple[str, str], dict[str, tuple[int, float]]], live: dict[str, int],
                 now_ms: int) -> dict[str, Usage]:
    """Each live placement's latest CPU (millicores, from utilisation x request) and memory sample.

    ``live`` maps placement id to its CPU request; samples older than the autoscaler's window are ignored.
    """
    cpu: dict[str, float] = {}
    mem: dict[str, int] = {}
    for (_, metric), latest in list(samples.items()):
        if metric not in ("cpu", MEMORY_METRIC):
            continue
        for key, (t, value) in list(latest.items()):
            if key not in live or now_ms - t > SAMPLE_WINDOW_MS:
                continue
            if metric == "cpu":
                cpu[key] = value * live[key]
            else:
                mem[key] = int(value)
    return {pid: Usage(cpu=cpu.get(pid), memory=mem.get(pid)) for pid in set(cpu) | set(mem)}


MAX_AGE_S = 1.0   # the longest a view is served for one index (how late a usage sample may show)
COSTLY_S = 0.05   # a view that took this long or longer to compute ...
REUSE_FACTOR = 10  # ... is reused by /metrics scrapes for this many times what it cost


def clock_of(replica: Any) -> Clock:
    """The replica's clock (its samples' clock until the replica carries one)."""
    clock: Clock = getattr(replica, "clock", None) or replica.metrics.clock
    return clock


class ViewCache:
    """The last view computed on one replica; ``computed`` counts the views actually computed, ``cost_s`` what
    the last one took (``timer``'s seconds: real time, so a view computed on a loaded replica counts as costlier).
    Safe to call from several threads: one computes, the others wait for its view; a scrape's refresh runs on a
    thread of its own (``refresher``), one at a time."""

    def __init__(self, max_age_s: float = MAX_AGE_S, timer: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.timer = timer
        self.computed = 0
        self.cost_s = 0.0
        self.refresher: threading.Thread | None = None   # the last refresh started for a scrape
        self._index: int | None = None
        self._at = 0.0
        self._ready = 0.0     # timer() when the last view was ready
        self._view: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()

    def view(self, replica: Any, *, reuse_costly: bool = False) -> dict[str, Any]:
        """The view at the replica's current index (at most ``max_age_s`` old). With ``reuse_costly`` (a /metrics
        scrape), the last view as it is when it cost ``COSTLY_S`` or more: while it is younger than
        ``REUSE_FACTOR`` times that cost nothing more happens; after that a new one is computed on a thread of its
        own for the next scrape. A scrape never waits for a costly view (bench/efficiency.py: 30,000 machines and
        300,000 placements cost ~2 s of CPU; on a leader under load a scrape took over 30 s, three times
        Prometheus' default scrape timeout)."""
        if reuse_costly and self._index is not None and self.cost_s >= COSTLY_S:
            last = self._view
            if self.timer() - self._ready > REUSE_FACTOR * self.cost_s and not self._fresh(replica):
                self._refresh(replica)
            return last
        with self._lock:
            if self._fresh(replica):
                return self._view
            return self._compute(replica)

    def _fresh(self, replica: Any) -> bool:
        """Whether the last view is at the replica's index and at most ``max_age_s`` old."""
        return self._index == replica.read(lambda s: s.index) and \
            clock_of(replica).monotonic() - self._at <= self.max_age_s

    def _refresh(self, replica: Any) -> None:
        with self._starting:   # not _lock: a view being computed holds that one, and a scrape never waits
            if self.refresher is not None and self.refresher.is_alive():
                return
            self.refresher = threading.Thread(target=self._refresh_now, args=(replica,), daemon=True,
                                              name="raftctl-efficiency-view")
            self.refresher.start()

    def _refresh_now(self, replica: Any) -> None:
        try:
            with self._lock:
                if not self._fresh(replica):
                    self._compute(replica)
        except Exception:  # noqa: BLE001 -- a scrape's background work: logged, the next scrape tries again
            log.exception("the efficiency view could not be computed")

    def _compute(self, replica: Any) -> dict[str, Any]:
        """A new view, under ``_lock``."""
        clock = clock_of(replica)
        began = self.timer()
        machines, placements, index = replica.read(lambda s: (dict(s.machines), dict(s.placements), s.index))
        live = {pid: p.resources.get("cpu", 0) for pid, p in placements.items() if p.holds_resources()}
        usage = latest_usage(replica.metrics.samples, live, clock.now_ms())
        self._view = {"index": index, **efficiency(machines, placements, usage)}
        # aged from when it was ready: a view that takes longer than MAX_AGE_S to compute is still reused
        self._index, self._at = index, clock.monotonic()
        self._ready = self.timer()
        self.cost_s = self._ready - began
        self.computed += 1
        return self._view


def cache_of(replica: Any) -> ViewCache:
    cache = getattr(replica, "_efficiency_cache", None)
    if cache is None:
        cache = replica._efficiency_cache = ViewCache()
    assert isinstance(cache, ViewCache)
    return cache


def compute(replica: Any) -> dict[str, Any]:
    """The view as this replica sees it now (shared with later callers until the state or the samples change:
    do not modify it). Seconds of CPU on a large cluster: call it off the event loop."""
    return cache_of(replica).view(replica)


@perm("read")
async def get_efficiency(request: web.Request) -> web.StreamResponse:
    forwarded = await forward_to_leader(request)
    if forwarded is not None:
        return forwarded
    replica = request.app[REPLICA]
    data = {**await asyncio.get_running_loop().run_in_executor(None, compute, replica)}
    rs = replica.raft.raft_status() if replica.raft is not None else {"state": "none"}
    data["usage_from"] = {"node": replica.cfg.node_id, "leader": rs["state"] == "leader"}
    return encode(request, data, index=data["index"])


def add_routes(app: web.Application) -> None:
    routes(app).add_get("/v1/efficiency", get_efficiency)


def prometheus_families(replica: Any) -> Iterator[Metric]:
    """The view as gauges for GET /metrics: cluster and per-zone figures by resource, and the packing figures.

    Usage lives in the leader's memory, so ``used``/``idle`` are meaningful on the leader's scrape. A costly view
    is reused for a while (``ViewCache.view``'s ``reuse_costly``).
    """
    view = cache_of(replica).view(replica, reuse_costly=True)
    cl = view["cluster"]
    for kind in ("capacity", "allocated", "used", "free", "idle", "stranded"):
        g = GaugeMetricFamily(f"raftctl_efficiency_{kind}", f"Cluster {kind} by resource (CPU millicores, bytes)",
                              labels=["resource"])
        for res, v in cl[kind].items():
            g.add_metric([res], v)
        yield g
        z = GaugeMetricFamily(f"raftctl_efficiency_zone_{kind}", f"{kind.capitalize()} per zone by resource",
                              labels=["zone", "resource"])
        for d in view["domains"]["zone"]:
            for res, v in d[kind].items():
                z.add_metric([d["domain"], res], v)
        yield z
    for name, value, doc in (
        ("raftctl_efficiency_machines_in_use", cl["machines_in_use"], "Machines holding at least one placement"),
        ("raftctl_efficiency_fit_lower_bound", cl["fit"]["lower_bound"],
         "Fewest machines the live placements could fit into (capacity bound; NaN: more than the cluster has)"),
        ("raftctl_efficiency_fit_first_fit_decreasing", cl["fit"]["first_fit_decreasing"],
         "Machines first-fit-decreasing packs the live placements into"),
    ):
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float("nan") if value is None else value)
        yield g
