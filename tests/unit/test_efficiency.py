"""The efficiency view (pure): capacity, allocation, usage, idle and stranded capacity, packing figures."""
from __future__ import annotations

import random
import threading

import pytest

from raftctl.clock import FakeClock
from raftctl.node.autoscale import SAMPLE_WINDOW_MS, Metrics
from raftctl.node.efficiency import (COSTLY_S, MAX_AGE_S, MEMORY_METRIC, REUSE_FACTOR, ViewCache, cache_of, compute,
                                     prometheus_families)
from raftctl.scheduler.efficiency import SUMMED, Usage, _domains, efficiency, first_fit_decreasing, lower_bound
from raftctl.statemachine.records import LEVELS, Machine, Placement
from raftctl.statemachine.state import State
from tests.unit.record_fixtures import as_machine, as_placement

Mi = 1 << 20
Gi = 1 << 30


def machine(mid: str, cpu: int = 2000, memory: int = 2 * Gi, zone: str = "z1", rack: str = "r1",
            status: str = "up", drain: dict | None = None) -> Machine:
    return as_machine({"id": mid, "status": status, "drain": drain, "eligible": True,
                       "fault_domain": {"region": "eu", "zone": zone, "rack": rack},
                       "resources": {"cpu": cpu, "memory": memory, "pids": 1000}})


def placement(pid: str, mid: str, cpu: int, memory: int, job: str = "web", state: str = "running") -> Placement:
    return as_placement({"id": pid, "job": job, "version": 1, "replica": 0, "machine": mid, "state": state,
                         "resources": {"cpu": cpu, "memory": memory}})


def by_id(*records: Machine | Placement) -> dict:
    return {r.id: r for r in records}


def test_capacity_allocated_used_free_and_idle_per_machine():
    ms = by_id(machine("a"), machine("b"))
    ps = by_id(placement("p1", "a", 500, 256 * Mi), placement("p2", "a", 500, 256 * Mi),
               placement("p3", "b", 1000, Gi, state="lost"))
    view = efficiency(ms, ps, {"p1": Usage(cpu=100.0, memory=100 * Mi)})
    a, b = view["machines"]
    assert a["capacity"] == {"cpu": 2000, "memory": 2 * Gi}
    assert a["allocated"] == {"cpu": 1000, "memory": 512 * Mi}
    assert a["used"] == {"cpu": 100.0, "memory": 100 * Mi}
    assert a["reported"] == {"cpu": 1, "memory": 1}
    assert a["free"] == {"cpu": 1000, "memory": 2 * Gi - 512 * Mi}
    # idle counts only reported placements: p1 holds 500m and uses 100m
    assert a["idle"] == {"cpu": 400.0, "memory": 156 * Mi}
    assert a["placements"] == 2
    # a lost placement holds nothing
    assert b["allocated"] == {"cpu": 0, "memory": 0} and b["placements"] == 0


@pytest.mark.parametrize("free_cpu, free_mem, stranded_cpu, stranded_mem", [
    # (free CPU, free memory) on one active machine; the smallest live request is 100m / 64Mi
    (1000, 32 * Mi, 1000, 0),        # memory ran out: the free CPU is stranded
    (50, 1 * Gi, 0, 1 * Gi),         # CPU ran out: the free memory is stranded
    (1000, 1 * Gi, 0, 0),            # both free: nothing stranded
    (50, 32 * Mi, 50, 32 * Mi),      # both below a slot: both stranded
    (0, 0, 0, 0),                    # full
])
def test_stranded_capacity(free_cpu, free_mem, stranded_cpu, stranded_mem):
    cap_cpu, cap_mem = 2000, 2 * Gi
    ms = by_id(machine("a", cpu=cap_cpu, memory=cap_mem))
    ps = by_id(placement("small", "a", 100, 64 * Mi),
               placement("big", "a", cap_cpu - 100 - free_cpu, cap_mem - 64 * Mi - free_mem))
    view = efficiency(ms, ps, {})
    assert view["machines"][0]["free"] == {"cpu": free_cpu, "memory": free_mem}
    assert view["machines"][0]["stranded"] == {"cpu": stranded_cpu, "memory": stranded_mem}


@pytest.mark.parametrize("state_kw, state", [
    ({"drain": {"since": 1}}, "draining"),
    ({"status": "down"}, "down"),
])
def test_machines_that_take_no_work_strand_nothing(state_kw, state):
    ms = by_id(machine("a", **state_kw))
    ps = by_id(placement("p", "a", 1900, 100 * Mi))
    row = efficiency(ms, ps, {})["machines"][0]
    assert row["state"] == state
    assert row["stranded"] == {"cpu": 0, "memory": 0}
    if state == "down":
        assert row["capacity"] == {"cpu": 0, "memory": 0}


def test_fault_domains_sum_their_machines():
    ms = by_id(machine("a", zone="z1", rack="r1"), machine("b", zone="z1", rack="r2"),
               machine("c", zone="z2", rack="r3"))
    ps = by_id(placement("p1", "a", 500, Gi), placement("p2", "b", 500, Gi), placement("p3", "c", 250, Gi))
    view = efficiency(ms, ps, {"p1": Usage(cpu=250.0), "p3": Usage(cpu=250.0, memory=Gi)})
    assert [d["domain"] for d in view["domains"]["region"]] == ["eu"]
    zones = {d["domain"]: d for d in view["domains"]["zone"]}
    assert zones["eu/z1"]["machines"] == 2 and zones["eu/z1"]["placements"] == 2
    assert zones["eu/z1"]["capacity"] == {"cpu": 4000, "memory": 4 * Gi}
    assert zones["eu/z1"]["allocated"] == {"cpu": 1000, "memory": 2 * Gi}
    assert zones["eu/z1"]["used"] == {"cpu": 250.0, "memory": 0}
    assert zones["eu/z1"]["reported"] == {"cpu": 1, "memory": 0}
    assert zones["eu/z2"]["idle"] == {"cpu": 0.0, "memory": 0.0}
    assert [d["domain"] for d in view["domains"]["rack"]] == ["eu/z1/r1", "eu/z1/r2", "eu/z2/r3"]
    assert view["cluster"]["allocated"] == {"cpu": 1250, "memory": 3 * Gi}


def test_jobs_allocation_usage_and_utilisation():
    ms = by_id(machine("a"), machine("b"))
    ps = by_id(placement("w1", "a", 500, Gi), placement("w2", "b", 500, Gi),
               placement("d1", "a", 200, 100 * Mi, job="db"), placement("old", "b", 900, Gi, state="stopped"))
    view = efficiency(ms, ps, {"w1": Usage(cpu=400.0, memory=Gi // 2), "w2": Usage(cpu=100.0, memory=Gi // 2)})
    jobs = {j["job"]: j for j in view["jobs"]}
    assert set(jobs) == {"web", "db"}
    assert jobs["web"]["replicas"] == 2
    assert jobs["web"]["allocated"] == {"cpu": 1000, "memory": 2 * Gi}
    assert jobs["web"]["used"] == {"cpu": 500.0, "memory": Gi}
    assert jobs["web"]["utilisation"] == {"cpu": 0.5, "memory": 0.5}
    assert jobs["web"]["idle"] == {"cpu": 500.0, "memory": Gi}
    assert jobs["db"]["utilisation"] == {"cpu": None, "memory": None}   # no report: unknown, not zero


@pytest.mark.parametrize("items, bins, expect", [
    # four half-machines fit into two machines
    ([(500, 1)] * 4, [(1000, 10)] * 4, (2, 0)),
    # three 60% items cannot share: three machines although the volume is 1.8
    ([(600, 1)] * 3, [(1000, 10)] * 4, (3, 0)),
    # FFD puts the big ones first, then fills the gaps: 70+30, 70+30, 40+40+20
    ([(300, 1), (700, 1), (400, 1), (300, 1), (700, 1), (400, 1), (200, 1)], [(1000, 10)] * 5, (3, 0)),
    # memory is the binding resource
    ([(100, 6)] * 4, [(1000, 10)] * 4, (4, 0)),
    # an item bigger than every machine fits nowhere
    ([(2000, 1), (100, 1)], [(1000, 10)] * 2, (1, 1)),
    # machines are tried largest first: one big machine holds everything
    ([(500, 1)] * 3, [(4000, 10), (1000, 10), (1000, 10)], (1, 0)),
    ([], [(1000, 10)], (0, 0)),
])
def test_first_fit_decreasing(items, bins, expect):
    its = [(f"p{i}", {"cpu": c, "memory": m}) for i, (c, m) in enumerate(items)]
    bs = sorted([(f"m{i}", {"cpu": c, "memory": m}) for i, (c, m) in enumerate(bins)],
                key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    assert first_fit_decreasing(its, bs) == expect


@pytest.mark.parametrize("demand, capacities, expect", [
    ({"cpu": 1800, "memory": 1}, [{"cpu": 1000, "memory": 10}] * 4, 2),
    ({"cpu": 1800, "memory": 25}, [{"cpu": 1000, "memory": 10}] * 4, 3),   # memory needs three
    ({"cpu": 4000, "memory": 1}, [{"cpu": 3000, "memory": 10}, {"cpu": 1000, "memory": 10}], 2),
    ({"cpu": 0, "memory": 0}, [{"cpu": 1000, "memory": 10}], 0),
    ({"cpu": 5000, "memory": 1}, [{"cpu": 1000, "memory": 10}] * 2, None),  # more than the cluster has
])
def test_lower_bound(demand, capacities, expect):
    assert lower_bound(demand, capacities) == expect


def test_cluster_fit_figures_bound_the_current_spread():
    # eight 250m replicas spread one per machine over eight machines could live on one
    ms = by_id(*(machine(f"m{i}", cpu=2000, memory=2 * Gi) for i in range(8)))
    ps = by_id(*(placement(f"p{i}", f"m{i}", 250, 128 * Mi) for i in range(8)))
    fit = efficiency(ms, ps, {})["cluster"]["fit"]
    assert efficiency(ms, ps, {})["cluster"]["machines_in_use"] == 8
    assert fit["lower_bound"] == 1 and fit["first_fit_decreasing"] == 1 and fit["unplaceable"] == 0
    assert fit["unit"] == {"cpu": 250, "memory": 128 * Mi}


def test_down_machines_are_no_packing_target():
    ms = by_id(machine("big", cpu=8000, memory=8 * Gi, status="down"), machine("a"), machine("b"))
    ps = by_id(placement("p1", "a", 1500, Gi), placement("p2", "b", 1500, Gi))
    fit = efficiency(ms, ps, {})["cluster"]["fit"]
    assert fit == {"lower_bound": 2, "first_fit_decreasing": 2, "unplaceable": 0,
                   "unit": {"cpu": 1500, "memory": Gi}}


def test_the_view_is_deterministic():
    ms = by_id(*(machine(f"m{i}", zone=f"z{i % 2}") for i in range(5)))
    ps = by_id(*(placement(f"p{i}", f"m{i % 5}", 100 + i * 37, (64 + i) * Mi, job=f"j{i % 3}") for i in range(20)))
    usage = {f"p{i}": Usage(cpu=float(i), memory=i * Mi) for i in range(0, 20, 2)}
    assert efficiency(ms, ps, usage) == efficiency(dict(reversed(ms.items())), dict(reversed(ps.items())), usage)


# -- the node's view is computed once per state change -------------------------------------------------------

class FakeReplica:
    """What node/efficiency.py reads of a replica: its state (through ``read``), its samples and its clock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics(self.clock)
        self.state = State()

    def read(self, fn):
        return fn(self.state)

    def put(self, *records: Machine | Placement) -> None:
        """Stands for an applied command: the records change and the index moves."""
        for r in records:
            (self.state.machines if isinstance(r, Machine) else self.state.placements)[r.id] = r
        self.state.index += 1


def test_repeated_reads_at_one_index_compute_the_view_once():
    rep = FakeReplica()
    rep.put(machine("a"), placement("p1", "a", 500, 256 * Mi))
    first = compute(rep)
    assert compute(rep) is first
    list(prometheus_families(rep))          # a /metrics scrape reads the same view
    assert cache_of(rep).computed == 1
    assert first["cluster"]["allocated"] == {"cpu": 500, "memory": 256 * Mi}


def test_a_read_after_a_command_sees_it():
    rep = FakeReplica()
    rep.put(machine("a"))
    assert compute(rep)["cluster"]["placements"] == 0
    rep.put(placement("p1", "a", 500, 256 * Mi))
    view = compute(rep)
    assert view["cluster"]["placements"] == 1 and view["index"] == rep.state.index
    gauges = {f.name: f.samples for f in prometheus_families(rep)}
    assert {s.labels["resource"]: s.value for s in gauges["raftctl_efficiency_allocated"]}["cpu"] == 500
    assert cache_of(rep).computed == 2


def test_a_usage_sample_shows_within_max_age():
    rep = FakeReplica()
    rep.put(machine("a"), placement("p1", "a", 500, 256 * Mi, job="web"))
    assert compute(rep)["cluster"]["reported"] == {"cpu": 0, "memory": 0}
    # samples arrive outside the log: the view at this index is served until it is MAX_AGE_S old
    rep.metrics.add("web", "cpu", 0.5, key="p1")
    rep.metrics.add("web", MEMORY_METRIC, 100 * Mi, key="p1")
    assert compute(rep)["cluster"]["reported"] == {"cpu": 0, "memory": 0}
    rep.clock.advance(MAX_AGE_S * 1.01)
    assert compute(rep)["cluster"]["used"] == {"cpu": 250.0, "memory": 100 * Mi}
    assert cache_of(rep).computed == 2


def test_a_view_is_served_for_at_most_max_age():
    rep = FakeReplica()
    rep.put(machine("a"), placement("p1", "a", 500, 256 * Mi, job="web"))
    rep.metrics.add("web", "cpu", 0.5, key="p1")
    assert compute(rep)["cluster"]["reported"]["cpu"] == 1
    rep.clock.advance(MAX_AGE_S / 2)
    compute(rep)
    assert cache_of(rep).computed == 1
    # nothing changed in the state or the samples, but the sample left the window as time passed
    rep.clock.advance(SAMPLE_WINDOW_MS / 1000)
    assert compute(rep)["cluster"]["reported"]["cpu"] == 0
    assert cache_of(rep).computed == 2


class SteppingTimer:
    """A timer for ViewCache: each reading is ``step`` seconds after the one before (a view's computation, between
    two readings, "takes" ``step``)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_scrape_reuses_a_costly_view_for_ten_times_its_cost_and_the_route_never_does():
    rep = FakeReplica()
    timer = SteppingTimer(COSTLY_S * 2)               # every view "costs" 2 x COSTLY_S
    rep._efficiency_cache = ViewCache(timer=timer)
    rep.put(machine("a"))
    list(prometheus_families(rep))
    cache = cache_of(rep)
    assert cache.computed == 1 and cache.cost_s == pytest.approx(COSTLY_S * 2)
    rep.put(placement("p1", "a", 500, 256 * Mi))       # a command: a new index
    gauges = {f.name: f.samples for f in prometheus_families(rep)}
    assert cache.computed == 1                          # the scrape took the costly view as it was
    assert {s.labels["resource"]: s.value for s in gauges["raftctl_efficiency_allocated"]}["cpu"] == 0
    assert compute(rep)["cluster"]["placements"] == 1   # GET /v1/efficiency: the current index, always
    assert cache.computed == 2
    rep.put(placement("p2", "a", 100, 64 * Mi))
    timer.now += REUSE_FACTOR * cache.cost_s            # the window is over: this scrape still answers at once,
    gauges = {f.name: f.samples for f in prometheus_families(rep)}   # with the view it has, and starts a new one
    assert {s.labels["resource"]: s.value for s in gauges["raftctl_efficiency_allocated"]}["cpu"] == 500
    assert cache.refresher is not None and cache.refresher.name == "raftctl-efficiency-view"
    cache.refresher.join(5)
    assert cache.computed == 3
    gauges = {f.name: f.samples for f in prometheus_families(rep)}   # the next scrape has it
    assert {s.labels["resource"]: s.value for s in gauges["raftctl_efficiency_allocated"]}["cpu"] == 600
    assert cache.computed == 3


def test_a_scrape_never_waits_for_a_costly_view_being_computed():
    rep = FakeReplica()
    timer = SteppingTimer(COSTLY_S * 2)
    rep._efficiency_cache = cache = ViewCache(timer=timer)
    rep.put(machine("a"), placement("p1", "a", 500, 256 * Mi))
    list(prometheus_families(rep))
    rep.put(placement("p2", "a", 100, 64 * Mi))
    timer.now += REUSE_FACTOR * cache.cost_s
    with cache._lock:                                   # a view being computed (GET /v1/efficiency) holds it
        done = threading.Event()
        scrape = threading.Thread(target=lambda: (list(prometheus_families(rep)), done.set()))
        scrape.start()
        assert done.wait(5), "the scrape waited for the view being computed"
        assert cache.refresher is not None and cache.refresher.is_alive()   # waiting for its turn
        list(prometheus_families(rep))                  # another scrape meanwhile starts no second refresh
        refreshers = [t for t in threading.enumerate() if t.name == "raftctl-efficiency-view"]
        assert refreshers == [cache.refresher]
    cache.refresher.join(5)
    assert cache.computed == 2
    assert compute(rep)["cluster"]["placements"] == 2


def test_a_failed_refresh_is_logged_and_the_next_scrape_tries_again(caplog):
    rep = FakeReplica()
    timer = SteppingTimer(COSTLY_S * 2)
    rep._efficiency_cache = cache = ViewCache(timer=timer)
    rep.put(machine("a"))
    list(prometheus_families(rep))
    rep.put(placement("p1", "a", 500, 256 * Mi))
    timer.now += REUSE_FACTOR * cache.cost_s
    samples, rep.metrics.samples = rep.metrics.samples, None     # the usage read fails once
    list(prometheus_families(rep))
    cache.refresher.join(5)
    assert cache.computed == 1 and "could not be computed" in caplog.text
    rep.metrics.samples = samples
    list(prometheus_families(rep))
    cache.refresher.join(5)
    assert cache.computed == 2


def test_a_cheap_view_is_not_reused_across_commands_by_a_scrape():
    rep = FakeReplica()
    rep._efficiency_cache = ViewCache(timer=SteppingTimer(COSTLY_S / 10))
    rep.put(machine("a"))
    list(prometheus_families(rep))
    rep.put(placement("p1", "a", 500, 256 * Mi))
    list(prometheus_families(rep))
    assert cache_of(rep).computed == 2


async def test_a_metrics_scrape_is_collected_off_the_event_loop():
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from raftctl.node import metrics
    from raftctl.node.http import REPLICA

    threads: list[threading.Thread] = []

    class Recording:
        def collect(self):
            threads.append(threading.current_thread())
            g = GaugeMetricFamily("raftctl_probe", "where the scrape ran")
            g.add_metric([], 1)
            yield g

    class Replica:
        _metrics_registry = CollectorRegistry()
        _api_metrics = None

    Replica._metrics_registry.register(Recording())
    app = web.Application()
    app[REPLICA] = Replica()
    app.router.add_get("/metrics", metrics.handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and "raftctl_probe 1.0" in await resp.text()
    assert threads and threads[0] is not threading.current_thread()


def plain_first_fit_decreasing(items, bins):
    """The textbook FFD over every opened machine (first_fit_decreasing skips machines too full for any item)."""
    if not bins:
        return 0, len(items)
    biggest = {r: max(b[1][r] for b in bins) or 1 for r in ("cpu", "memory")}
    order = sorted(items, key=lambda it: (-max(it[1][r] / biggest[r] for r in biggest),
                                          -sum(it[1][r] / biggest[r] for r in biggest), it[0]))
    opened, unplaced = [], 0
    for _, need in order:
        fits = [room for room in opened if all(room[r] >= need[r] for r in need)]
        while not fits and len(opened) < len(bins):
            opened.append(dict(bins[len(opened)][1]))
            fits = [opened[-1]] if all(opened[-1][r] >= need[r] for r in need) else []
        if not fits:
            unplaced += 1
            continue
        for r in need:
            fits[0][r] -= need[r]
    return sum(1 for room, (_, cap) in zip(opened, bins) if room != cap), unplaced


@pytest.mark.parametrize("seed", range(40))
def test_first_fit_decreasing_matches_plain_ffd(seed):
    rng = random.Random(seed)
    items = [(f"i{k}", {"cpu": rng.randint(0, 9) * 100, "memory": rng.randint(0, 9)}) for k in range(rng.randint(0, 60))]
    bins = [(f"b{k}", {"cpu": rng.choice([500, 1000, 2000]), "memory": rng.choice([5, 10, 20])})
            for k in range(rng.randint(0, 15))]
    bins.sort(key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    assert first_fit_decreasing(items, bins) == plain_first_fit_decreasing(items, bins)


@pytest.mark.parametrize("seed", range(60))
def test_first_fit_decreasing_of_many_alike_matches_plain_ffd(seed):
    # a fleet's placements: a few requests asked by many replicas each, in ids that interleave, with pairs whose
    # shares of the biggest machine tie ((200, 1) and (100, 2) of (1000, 10)) and zero requests
    rng = random.Random(seed)
    pool = [(200, 1), (100, 2), (300, 3), (0, 0), (500, 0), (0, 4), (1000, 10), (100, 1)]
    sizes = rng.sample(pool, rng.randint(1, len(pool)))
    items = [(f"i{rng.randrange(10 ** 6):07d}", dict(zip(("cpu", "memory"), rng.choice(sizes))))
             for _ in range(rng.randint(0, 300))]
    bins = [(f"b{k}", {"cpu": rng.choice([500, 1000]), "memory": rng.choice([5, 10])})
            for k in range(rng.randint(0, 40))]
    bins.sort(key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    assert first_fit_decreasing(items, bins) == plain_first_fit_decreasing(items, bins)


def plain_domains(rows):
    """Every level summed from the machine rows themselves, each row keyed by its own path's prefix."""
    domains = {}
    for depth, level in enumerate(LEVELS):
        acc = {}
        for row in rows:
            key = "/".join(row["fault_domain"][lv] for lv in LEVELS[:depth + 1])
            d = acc.setdefault(key, {"domain": key, "machines": 0, "placements": 0, **{k: {} for k in SUMMED}})
            d["machines"] += 1
            d["placements"] += row["placements"]
            for k in SUMMED:
                for r, v in row[k].items():
                    d[k][r] = d[k].get(r, 0) + v
        domains[level] = [acc[k] for k in sorted(acc)]
    return domains


@pytest.mark.parametrize("seed", range(30))
def test_fault_domains_match_the_rows_summed_per_level(seed):
    # values may hold "/" or be empty: ("a/b", "c") and ("a", "b/c") are one zone "a/b/c" but two regions, so a
    # coarser level must come from each machine's own path, not from the finer level's joined names
    rng = random.Random(seed)
    values = ["a", "b", "a/b", "b/c", ""]
    rows = [{"fault_domain": {lv: rng.choice(values) for lv in LEVELS}, "placements": rng.randint(0, 5),
             **{k: {"cpu": rng.randint(0, 9), "memory": rng.randint(0, 9)} for k in SUMMED}}
            for _ in range(rng.randint(0, 40))]
    assert _domains(rows) == plain_domains(rows)
