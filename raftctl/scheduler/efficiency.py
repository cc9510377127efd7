"""The efficiency engineer's view (pure): capacity vs allocated vs used, idle and stranded capacity,
and how many machines the current placements could fit into.

Inputs are the state's records and the agents' latest usage per placement; no I/O, no clock.

Definitions (all per resource, CPU in millicores and memory in bytes):

- capacity: the resources of machines whose status is ``up``;
- allocated: the sum of the requests of placements that still hold resources;
- used: what the agents last reported for those placements (CPU utilisation x request, memory bytes),
  summed over the placements that have a report (``reported`` counts them);
- free: capacity - allocated (on up machines);
- idle: allocated - used, over reported placements only: reserved but not used;
- stranded: free capacity that no replica of the cluster could use because the other resource ran out
  beside it: a machine's free CPU is stranded when its free memory is below the smallest memory request
  of any live placement (and the reverse). Only schedulable (``active``) machines strand capacity;
- fit: the live placements re-packed onto the up machines, ignoring spread, constraints and ports:
  ``lower_bound`` is the fewest largest machines whose summed capacity covers the demand in every
  resource (no packing can use fewer); ``first_fit_decreasing`` is what FFD achieves (largest
  placements first, into the first machine with room, machines largest first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from raftctl.statemachine.records import LEVELS, Machine, Placement

RESOURCES = ("cpu", "memory")
DEFAULT_UNIT = {"cpu": 100, "memory": 64 << 20}   # the smallest useful slot when nothing runs


@dataclass(frozen=True)
class Usage:
    """An agent's latest report for one placement: CPU in millicores, memory in bytes (None: not reported)."""

    cpu: float | None = None
    memory: int | None = None


def _zero() -> dict[str, float]:
    return {r: 0 for r in RESOURCES}


def _add(into: dict[str, float], other: Mapping[str, float]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def smallest_unit(ids: Mapping[tuple[int, ...], Any]) -> dict[str, int]:
    """The smallest request per resource among live placements, grouped by request (``requests_of``): what a
    stranded remainder is measured against."""
    unit = {}
    for i, r in enumerate(RESOURCES):
        asked = [need[i] for need in ids if need[i] > 0]
        unit[r] = min(asked) if asked else DEFAULT_UNIT[r]
    return unit


def _summary(capacity: Mapping[str, float], allocated: Mapping[str, float], used: Mapping[str, float],
             alloc_reported: Mapping[str, float], reported: Mapping[str, int]) -> dict[str, Any]:
    return {"capacity": dict(capacity), "allocated": dict(allocated), "used": {r: round(used[r], 1) for r in RESOURCES},
            "free": {r: max(0, capacity[r] - allocated[r]) for r in RESOURCES},
            "idle": {r: round(max(0.0, alloc_reported[r] - used[r]), 1) for r in RESOURCES},
            "reported": dict(reported)}


Need = tuple[int, ...]   # a request per resource, in RESOURCES' order
_ZEROS = (0,) * len(RESOURCES)


def requests_of(items: Iterable[tuple[str, Mapping[str, int]]]) -> dict[Need, list[str]]:
    """The ids of ``items`` (id, resources) by what they ask: a fleet's placements come from a few hundred jobs
    whose replicas ask the same, so 300,000 items make a few hundred keys."""
    ids: dict[Need, list[str]] = {}
    for pid, need in items:
        key = tuple(map(need.get, RESOURCES, _ZEROS))
        got = ids.get(key)
        if got is None:
            ids[key] = [pid]
        else:
            got.append(pid)
    return ids


def _runs(ids: Mapping[Need, list[str]], biggest: Mapping[str, int]) -> list[tuple[Need, int]]:
    """The items in FFD's order (the largest share of the biggest bin first, then the summed shares, then id) as
    runs: (request, how many items in a row ask exactly that). Only items whose shares tie with a different
    request's are ordered one by one (by id)."""
    keyed: dict[tuple[float, float], list[Need]] = {}
    for need in ids:
        shares = [need[i] / biggest[r] for i, r in enumerate(RESOURCES)]
        keyed.setdefault((-max(shares), -sum(shares)), []).append(need)
    runs: list[tuple[Need, int]] = []
    for key in sorted(keyed):
        needs = keyed[key]
        if len(needs) == 1:
            runs.append((needs[0], len(ids[needs[0]])))
            continue
        for _, need in sorted((pid, asked) for asked in needs for pid in ids[asked]):
            if runs and runs[-1][0] == need:
                runs[-1] = (need, runs[-1][1] + 1)
            else:
                runs.append((need, 1))
    return runs


def _room_for(room: list[int], need: tuple[int, ...]) -> int:
    """How many items asking ``need`` fit into ``room`` (a large number when it asks nothing)."""
    return min((room[i] // n for i, n in enumerate(need) if n > 0), default=1 << 62)


def first_fit_decreasing(items: list[tuple[str, Mapping[str, int]]] | Mapping[Need, list[str]],
                         bins: list[tuple[str, dict[str, int]]]) -> tuple[int, int]:
    """(machines used, items that fit nowhere) when FFD packs ``items`` into ``bins`` (in the given order).

    Items are sorted by their largest share of the biggest bin, then by id, so the result is deterministic. A run
    of items asking the same is placed at once: each goes to the first opened machine with room for it, and the
    machines before that one had no room for the one before it either, so the run fills the first machine with
    room as far as it goes, then the next (tests/unit/test_efficiency.py holds it equal to item-by-item FFD).
    ``items`` may come grouped already (``requests_of``). 30,000 machines and 300,000 placements took 3.4 s item
    by item (bench/efficiency.py has the figures in runs).
    """
    ids = items if isinstance(items, Mapping) else requests_of(items)
    if not bins:
        return 0, sum(map(len, ids.values()))
    biggest = {r: max(b[1][r] for b in bins) or 1 for r in RESOURCES}
    smallest = [min(need[i] for need in ids) for i in range(len(RESOURCES))] if ids else list(_ZEROS)
    opened: list[list[int]] = []
    usable: list[list[int]] = []    # opened machines with room for the smallest request in every resource
    unplaced = 0

    def take(room: list[int], need: tuple[int, ...], k: int) -> int:
        """Put up to ``k`` items into ``room``; how many went in."""
        n = min(k, _room_for(room, need))
        if n:
            for i, v in enumerate(need):
                room[i] -= n * v
        return n

    def too_small(room: list[int]) -> bool:
        return any(room[i] < smallest[i] for i in range(len(room)))

    for need, k in _runs(ids, biggest):
        i = 0
        while k and i < len(usable):
            room = usable[i]
            k -= take(room, need, k)
            if too_small(room):
                del usable[i]
            else:
                i += 1
        while k and len(opened) < len(bins):
            room = [bins[len(opened)][1][r] for r in RESOURCES]
            opened.append(room)
            k -= take(room, need, k)
            if not too_small(room):
                usable.append(room)
        unplaced += k
    # machines opened but left empty (too small for the items that came next) are not "used"
    return sum(1 for room, (_, cap) in zip(opened, bins) if room != [cap[r] for r in RESOURCES]), unplaced


def lower_bound(demand: Mapping[str, int], capacities: list[dict[str, int]]) -> int | None:
    """The fewest machines whose summed capacity covers ``demand`` in every resource (None: not even all)."""
    need = 0
    for r in RESOURCES:
        if demand[r] <= 0:
            continue
        total, k = 0, 0
        for cap in sorted((c[r] for c in capacities), reverse=True):
            if total >= demand[r]:
                break
            total += cap
            k += 1
        if total < demand[r]:
            return None
        need = max(need, k)
    return need


Resources = dict[str, Any]   # resource name -> figure
SUMMED = ("capacity", "allocated", "used", "free", "idle", "stranded", "reported")


def _tally(here: list[Placement], usage: Mapping[str, Usage]) -> tuple[Resources, Resources, Resources, Resources,
                                                                       Resources]:
    """(allocated, used, allocated over reported placements, reported counts, idle: per reported placement its
    request less its use, at least 0, summed) of the placements ``here``."""
    allocated, used, alloc_reported, idle = _zero(), _zero(), _zero(), _zero()
    reported = {r: 0 for r in RESOURCES}
    for p in here:
        asked = p.resources
        u = usage.get(p.id) if usage else None
        for r in RESOURCES:
            a = asked.get(r, 0)
            allocated[r] += a
            v = getattr(u, r) if u is not None else None
            if v is not None:
                used[r] += v
                reported[r] += 1
                alloc_reported[r] += a
                idle[r] += max(0.0, a - v)
    return allocated, used, alloc_reported, reported, idle


def _stranded(state: str, free: Mapping[str, float], unit: Mapping[str, int]) -> dict[str, float]:
    """Free capacity of an active machine beside a resource that ran out below the smallest request."""
    if state != "active":
        return {r: 0 for r in RESOURCES}
    return {"cpu": free["cpu"] if free["memory"] < unit["memory"] else 0,
            "memory": free["memory"] if free["cpu"] < unit["cpu"] else 0}


def _machine_row(mid: str, m: Machine, here: list[Placement], usage: Mapping[str, Usage],
                 unit: Mapping[str, int]) -> dict[str, Any]:
    state = m.state(bool(here))
    capacity = {r: m.resources.get(r, 0) if m.status == "up" else 0 for r in RESOURCES}
    allocated, used, alloc_reported, reported, _ = _tally(here, usage)
    row = _summary(capacity, allocated, used, alloc_reported, reported)
    row["stranded"] = _stranded(state, row["free"], unit)
    fd = m.fault_domain
    return {"id": mid, "state": state, "fault_domain": {k: fd.get(k, "") for k in LEVELS},
            "placements": len(here), **row}


def _machine_rows(machines: Mapping[str, Machine], live: list[Placement], usage: Mapping[str, Usage],
                  unit: Mapping[str, int]) -> list[dict[str, Any]]:
    by_machine: dict[str, list[Placement]] = {}
    for p in live:
        by_machine.setdefault(p.machine, []).append(p)
    return [_machine_row(mid, machines[mid], by_machine.get(mid, []), usage, unit) for mid in sorted(machines)]


def _domains(machine_rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The machine rows summed per fault domain at every level (region, region/zone, ...). The rows are summed
    once per whole path (region, zone, rack), and every level from those sums: a few hundred, not every machine
    again per level."""
    paths: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in machine_rows:
        path = tuple(row["fault_domain"][lv] for lv in LEVELS)
        _sum_into(paths, path, row, 1)
    domains: dict[str, list[dict[str, Any]]] = {}
    for depth, level in enumerate(LEVELS, 1):
        acc: dict[str, dict[str, Any]] = {}
        for path, part in paths.items():
            _sum_into(acc, "/".join(path[:depth]), part, part["machines"])
        domains[level] = [{"domain": key, **acc[key]} for key in sorted(acc)]
    return domains


def _sum_into(acc: dict[Any, dict[str, Any]], key: Any, part: Mapping[str, Any], machines: int) -> None:
    """Add ``part``'s placements and SUMMED figures, and ``machines``, to ``acc[key]`` (made when missing)."""
    d = acc.get(key)
    if d is None:
        d = acc[key] = {"machines": 0, "placements": 0, **{k: {} for k in SUMMED}}
    d["machines"] += machines
    d["placements"] += part["placements"]
    for k in SUMMED:
        _add(d[k], part[k])


def _rounded(figures: Mapping[str, float]) -> dict[str, float]:
    return {r: round(v, 1) for r, v in figures.items()}


def _job_row(job: str, ps: list[Placement], usage: Mapping[str, Usage]) -> dict[str, Any]:
    allocated, used, _, reported, idle = _tally(ps, usage)
    used, idle = _rounded(used), _rounded(idle)
    utilisation = {r: (round(used[r] / allocated[r], 4) if reported[r] and allocated[r] else None)
                   for r in RESOURCES}
    return {"job": job, "replicas": len(ps), "allocated": allocated, "used": used, "idle": idle,
            "reported": reported, "utilisation": utilisation}


def _jobs(live: list[Placement], usage: Mapping[str, Usage]) -> list[dict[str, Any]]:
    by_job: dict[str, list[Placement]] = {}
    for p in live:
        by_job.setdefault(p.job, []).append(p)
    return [_job_row(job, sorted(by_job[job], key=_id), usage) for job in sorted(by_job)]


def _id(p: Placement) -> str:
    return p.id


def _fit(machines: Mapping[str, Machine], ids: Mapping[Need, list[str]], unit: dict[str, int]) -> dict[str, Any]:
    up = [(mid, _machine_capacity(m)) for mid, m in sorted(machines.items()) if m.status == "up"]
    up.sort(key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    demand = {r: sum(need[i] * len(held) for need, held in ids.items()) for i, r in enumerate(RESOURCES)}
    ffd, unplaced = first_fit_decreasing(ids, up)
    return {"lower_bound": lower_bound(demand, [b[1] for b in up]), "first_fit_decreasing": ffd,
            "unplaceable": unplaced, "unit": unit}


def _machine_capacity(m: Machine) -> dict[str, int]:
    return {r: m.resources.get(r, 0) for r in RESOURCES}


def _cluster(machine_rows: list[dict[str, Any]], live: list[Placement],
             regions: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster's figures: the sums of its regions' (``_domains``), which sum its machines'."""
    cluster: dict[str, Any] = {"machines": len(machine_rows), "placements": len(live)}
    for k in SUMMED:
        cluster[k] = {r: sum(d[k].get(r, 0) for d in regions) for r in RESOURCES}
    cluster["used"] = _rounded(cluster["used"])
    cluster["idle"] = _rounded(cluster["idle"])
    cluster["machines_in_use"] = sum(1 for row in machine_rows if row["placements"])
    return cluster


def efficiency(machines: Mapping[str, Machine], placements: Mapping[str, Placement],
               usage: Mapping[str, Usage]) -> dict[str, Any]:
    """The whole view; ``usage`` maps placement id to its latest reported usage."""
    live = [p for p in placements.values() if p.holds_resources()]
    ids = requests_of((p.id, p.resources) for p in live)
    unit = smallest_unit(ids)
    machine_rows = _machine_rows(machines, live, usage, unit)
    domains = _domains(machine_rows)
    cluster = _cluster(machine_rows, live, domains[LEVELS[0]])
    cluster["fit"] = _fit(machines, ids, unit)
    return {"cluster": cluster, "machines": machine_rows, "domains": domains, "jobs": _jobs(live, usage)}
