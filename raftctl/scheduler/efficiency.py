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


def _add(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


def smallest_unit(placements: Iterable[Placement]) -> dict[str, int]:
    """The smallest request per resource among live placements (what a stranded remainder is measured against)."""
    unit: dict[str, int] = {}
    for p in placements:
        if not p.holds_resources():
            continue
        for r in RESOURCES:
            v = p.resources.get(r, 0)
            if v > 0 and (r not in unit or v < unit[r]):
                unit[r] = v
    return {r: unit.get(r, DEFAULT_UNIT[r]) for r in RESOURCES}


def _usage_of(p: Placement, usage: Mapping[str, Usage]) -> tuple[dict[str, float], dict[str, int]]:
    u = usage.get(p.id)
    used, reported = _zero(), {r: 0 for r in RESOURCES}
    if u is None:
        return used, reported
    for r in RESOURCES:
        v = getattr(u, r)
        if v is not None:
            used[r] = v
            reported[r] = 1
    return used, reported


def _summary(capacity: Mapping[str, float], allocated: Mapping[str, float], used: Mapping[str, float],
             alloc_reported: Mapping[str, float], reported: Mapping[str, int]) -> dict[str, Any]:
    return {"capacity": dict(capacity), "allocated": dict(allocated), "used": {r: round(used[r], 1) for r in RESOURCES},
            "free": {r: max(0, capacity[r] - allocated[r]) for r in RESOURCES},
            "idle": {r: round(max(0.0, alloc_reported[r] - used[r]), 1) for r in RESOURCES},
            "reported": dict(reported)}


def _take(room: dict[str, int], need: Mapping[str, int], usable: list[dict[str, int]],
          smallest: Mapping[str, float]) -> None:
    """Put ``need`` into ``room``; a room left too small for any item leaves ``usable`` (FFD would skip it)."""
    for r in RESOURCES:
        room[r] -= need[r]
    if any(room[r] < smallest[r] for r in RESOURCES):
        del usable[next(i for i, u in enumerate(usable) if u is room)]   # by identity: rooms may be equal


def first_fit_decreasing(items: list[tuple[str, dict[str, int]]],
                         bins: list[tuple[str, dict[str, int]]]) -> tuple[int, int]:
    """(machines used, items that fit nowhere) when FFD packs ``items`` into ``bins`` (in the given order).

    Items are sorted by their largest share of the biggest bin, then by id, so the result is deterministic.
    """
    if not bins:
        return 0, len(items)
    biggest = {r: max(b[1][r] for b in bins) or 1 for r in RESOURCES}
    order = sorted(items, key=lambda it: (-max(it[1][r] / biggest[r] for r in RESOURCES),
                                          -sum(it[1][r] / biggest[r] for r in RESOURCES), it[0]))
    smallest = {r: min(it[1][r] for it in items) for r in RESOURCES} if items else _zero()
    opened: list[dict[str, int]] = []
    usable: list[dict[str, int]] = []    # opened machines with room for the smallest request in every resource
    unplaced = 0
    for _, need in order:
        for room in usable:
            if all(room[r] >= need[r] for r in RESOURCES):
                _take(room, need, usable, smallest)
                break
        else:
            for _, cap in bins[len(opened):]:
                room = dict(cap)
                opened.append(room)
                usable.append(room)
                if all(room[r] >= need[r] for r in RESOURCES):
                    _take(room, need, usable, smallest)
                    break
            else:
                unplaced += 1
    # machines opened but left empty (too small for the items that came next) are not "used"
    used = sum(1 for room, (_, cap) in zip(opened, bins) if room != cap)
    return used, unplaced


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


def _request(p: Placement) -> dict[str, int]:
    return {r: p.resources.get(r, 0) for r in RESOURCES}


def _tally(here: list[Placement], usage: Mapping[str, Usage]) -> tuple[Resources, Resources, Resources, Resources]:
    """(allocated, used, allocated over reported placements, reported counts) of the placements ``here``."""
    allocated, used, alloc_reported = _zero(), _zero(), _zero()
    reported = {r: 0 for r in RESOURCES}
    for p in here:
        req = _request(p)
        u, rep = _usage_of(p, usage)
        for r in RESOURCES:
            allocated[r] += req[r]
            used[r] += u[r]
            reported[r] += rep[r]
            alloc_reported[r] += req[r] if rep[r] else 0
    return allocated, used, alloc_reported, reported


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
    row = _summary(capacity, *_tally(here, usage))
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
    """The machine rows summed per fault domain at every level (region, region/zone, ...)."""
    domains: dict[str, list[dict[str, Any]]] = {}
    for depth, level in enumerate(LEVELS):
        acc: dict[str, dict[str, Any]] = {}
        for row in machine_rows:
            key = "/".join(row["fault_domain"][lv] for lv in LEVELS[:depth + 1])
            d = acc.setdefault(key, {"domain": key, "machines": 0, "placements": 0})
            d["machines"] += 1
            d["placements"] += row["placements"]
            _add(d, {k: row[k] for k in SUMMED})
        domains[level] = [acc[k] for k in sorted(acc)]
    return domains


def _rounded(figures: Mapping[str, float]) -> dict[str, float]:
    return {r: round(v, 1) for r, v in figures.items()}


def _job_row(job: str, ps: list[Placement], usage: Mapping[str, Usage]) -> dict[str, Any]:
    allocated, used, idle = _zero(), _zero(), _zero()
    reported = {r: 0 for r in RESOURCES}
    for p in ps:
        u, rep = _usage_of(p, usage)
        for r in RESOURCES:
            asked = p.resources.get(r, 0)
            allocated[r] += asked
            used[r] += u[r]
            reported[r] += rep[r]
            if rep[r]:
                idle[r] += max(0.0, asked - u[r])
    used, idle = _rounded(used), _rounded(idle)
    utilisation = {r: (round(used[r] / allocated[r], 4) if reported[r] and allocated[r] else None)
                   for r in RESOURCES}
    return {"job": job, "replicas": len(ps), "allocated": allocated, "used": used, "idle": idle,
            "reported": reported, "utilisation": utilisation}


def _jobs(live: list[Placement], usage: Mapping[str, Usage]) -> list[dict[str, Any]]:
    by_job: dict[str, list[Placement]] = {}
    for p in sorted(live, key=lambda p: p.id):
        by_job.setdefault(p.job, []).append(p)
    return [_job_row(job, by_job[job], usage) for job in sorted(by_job)]


def _fit(machines: Mapping[str, Machine], live: list[Placement], unit: dict[str, int]) -> dict[str, Any]:
    up = [(mid, _machine_capacity(m)) for mid, m in sorted(machines.items()) if m.status == "up"]
    up.sort(key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    items = [(p.id, _request(p)) for p in live]
    demand = {r: sum(it[1][r] for it in items) for r in RESOURCES}
    ffd, unplaced = first_fit_decreasing(items, up)
    return {"lower_bound": lower_bound(demand, [b[1] for b in up]), "first_fit_decreasing": ffd,
            "unplaceable": unplaced, "unit": unit}


def _machine_capacity(m: Machine) -> dict[str, int]:
    return {r: m.resources.get(r, 0) for r in RESOURCES}


def _cluster(machine_rows: list[dict[str, Any]], live: list[Placement]) -> dict[str, Any]:
    cluster: dict[str, Any] = {"machines": len(machine_rows), "placements": len(live)}
    for k in SUMMED:
        cluster[k] = {r: sum(row[k][r] for row in machine_rows) for r in RESOURCES}
    cluster["used"] = _rounded(cluster["used"])
    cluster["idle"] = _rounded(cluster["idle"])
    cluster["machines_in_use"] = sum(1 for row in machine_rows if row["placements"])
    return cluster


def efficiency(machines: Mapping[str, Machine], placements: Mapping[str, Placement],
               usage: Mapping[str, Usage]) -> dict[str, Any]:
    """The whole view; ``usage`` maps placement id to its latest reported usage."""
    live = [p for p in placements.values() if p.holds_resources()]
    unit = smallest_unit(live)
    machine_rows = _machine_rows(machines, live, usage, unit)
    cluster = _cluster(machine_rows, live)
    cluster["fit"] = _fit(machines, live, unit)
    return {"cluster": cluster, "machines": machine_rows, "domains": _domains(machine_rows),
            "jobs": _jobs(live, usage)}
