"""The machines as one scheduling pass sees them: free resources and ports, replicas per job, fault domains.

Views are built once per pass from each machine's usage (the state's index, ``State.usage``, or computed from the
placements by the same function) and updated in place as the pass places, stops and preempts (``take``, ``give``:
the only writes, and each marks the view changed). The leader keeps the views its last pass built
(``ViewCache``) and builds again only those whose machine record or usage entry changed since, or that a pass
changed: the state replaces both on every change and keeps them on none, so the same objects mean the same view."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from typing import Mapping

from raftctl.scheduler.plan import RESOURCES
from raftctl.statemachine.records import Machine, Placement
from raftctl.statemachine.state import MachineUsage, usage_of


@dataclass
class MachineView:
    id: str
    record: Machine
    free: dict[str, int]
    capacity: dict[str, int]
    ports: set[int]
    by_job: Counter[tuple[str, int]]
    dom: dict[str, str] = field(default_factory=dict)
    free_ports: int = 0
    # bookkeeping for ViewCache, not part of what the view says (left out of ==): the usage entry it was built
    # from (compared by identity) and whether a pass took or gave something on it since
    usage: MachineUsage | None = field(default=None, compare=False)
    changed: bool = field(default=False, compare=False)

    def empty(self) -> bool:
        """Holds nothing: all its resources free, no port taken."""
        return self.free == self.capacity and not self.ports

    def domain(self, level: str) -> str:
        return self.dom.get(level, "")

    def take(self, resources: Mapping[str, int], ports: Mapping[str, int], key: tuple[str, int]) -> None:
        """Account for one more placement of ``key`` (job, version) holding ``resources`` and ``ports``."""
        self.changed = True
        free = self.free
        for k, n in resources.items():
            free[k] -= n
        self.take_ports(ports)
        self.by_job[key] += 1

    def give(self, resources: Mapping[str, int], ports: Mapping[str, int], key: tuple[str, int] | None) -> None:
        """Give back what one placement held (``key`` None: it was not counted as wanted running)."""
        self.changed = True
        free = self.free
        for k, n in resources.items():
            free[k] += n
        self.give_ports(ports)
        if key is not None:
            self.by_job[key] -= 1

    def take_ports(self, ports: Mapping[str, int]) -> None:
        self.changed = True
        lo, hi = self.record.ports
        for port in ports.values():
            if port not in self.ports:
                self.ports.add(port)
                if lo <= port <= hi:
                    self.free_ports -= 1

    def give_ports(self, ports: Mapping[str, int]) -> None:
        self.changed = True
        lo, hi = self.record.ports
        for port in ports.values():
            if port in self.ports:
                self.ports.discard(port)
                if lo <= port <= hi:
                    self.free_ports += 1


class Candidates(list[MachineView]):
    """The machines that pass a job's filters (``candidates_for``), and the number of fault domains they span at
    each level, counted once: a hard spread rule's cap per domain (``Spread.of``), which every job with the same
    constraints in a pass shares (it was 18 % of a re-placement pass at 5,000 machines, cProfile, session 16)."""

    def __init__(self, views: list[MachineView]) -> None:
        super().__init__(views)
        self._domains: dict[str, int] = {}
        self._by_use: tuple[list[MachineView], list[MachineView]] | None = None
        # machines this pass's placements opened (they were empty when a job chose them), in that order
        self.opened: dict[str, MachineView] = {}

    def by_use(self) -> tuple[list[MachineView], list[MachineView]]:
        """The candidates that held something and the empty ones, as they were when first asked, each in a
        ``stride_for`` order (far apart in registration order; every job that samples them starts at its own
        offset). Later jobs of the pass add the machines they open to ``opened``."""
        if self._by_use is None:
            used: list[MachineView] = []
            empty: list[MachineView] = []
            for v in self:
                (empty if v.empty() else used).append(v)
            self._by_use = (strided(used), strided(empty))
        return self._by_use

    def note_opened(self, v: MachineView) -> None:
        self.opened.setdefault(v.id, v)

    def domains(self, level: str) -> int:
        n = self._domains.get(level)
        if n is None:
            n = self._domains[level] = len({v.domain(level) for v in self})
        return n


def stride_for(n: int) -> int:
    """A step through ``n`` items that visits each once (coprime with ``n``) and lands far from the last one
    (near n / golden ratio), so a sample is not a run of machines registered together (one rack, one zone)."""
    if n <= 2:
        return 1
    step = int(n * 0.6180339887) | 1
    while math.gcd(step, n) != 1:
        step += 1
    return step


def strided(items: list[MachineView]) -> list[MachineView]:
    n = len(items)
    step = stride_for(n)
    return [items[i * step % n] for i in range(n)]


def build_views(machines: Mapping[str, Machine], placements: Mapping[str, Placement],
                usage: Mapping[str, MachineUsage] | None = None) -> dict[str, MachineView]:
    """Every machine's view. ``usage`` is each machine's usage by the placements that hold resources among
    ``placements`` (the state's index, copied with them); without it, it is computed from ``placements``
    (statemachine.state.usage_of, what the state builds its index with). O(machines) given ``usage``."""
    if usage is None:
        usage = usage_of(placements.values())
    return {mid: view_of(mid, machines[mid], usage.get(mid)) for mid in sorted(machines)}


def view_of(mid: str, m: Machine, u: MachineUsage | None) -> MachineView:
    """Machine ``mid``'s view given its record and its usage entry (None: nothing on it holds resources)."""
    lo, hi = m.ports
    if u is None:
        return MachineView(mid, m, dict(m.resources), dict(m.resources), set(), Counter(), dict(m.fault_domain),
                           hi - lo + 1)
    free = dict(m.resources)
    free["cpu"] -= u.cpu
    free["memory"] -= u.memory
    free["pids"] -= u.pids
    ports = u.ports
    if ports and (min(ports) < lo or max(ports) > hi):   # held before the machine's range changed
        inside = sum(1 for port in ports if lo <= port <= hi)
    else:
        inside = len(ports)
    by_job: Counter[tuple[str, int]] = Counter()
    dict.update(by_job, u.runs)   # Counter(...) checks its argument against the Mapping ABC: 40 % of this loop
    return MachineView(mid, m, free, dict(m.resources), set(ports), by_job, dict(m.fault_domain),
                       hi - lo + 1 - inside, u)


class ViewCache:
    """The views the last pass built, kept for the next one (the leader's scheduler loop holds one).

    ``views`` reuses a kept view when its machine's record and usage entry are the objects it was built from and
    no pass changed it (``MachineView.changed``); it builds the others. The state replaces a machine's record and
    its usage entry whenever they change, and keeps the entry when a report leaves the share the same
    (``State._recount``), so after the first pass with work only the machines that changed are built again:
    building all 10,000 views was 66-100 ms of a 300 ms re-placement pass (session 18). The views it hands out
    are the pass's to change, so one pass at a time may use it: its holder runs its passes one after another (the
    leader's scheduler loop; a dry run builds its own). Pure: the same inputs give views equal to
    ``build_views``' (tests/unit/test_view_cache.py)."""

    def __init__(self) -> None:
        self._views: dict[str, MachineView] = {}
        self.built = 0      # views built, for the tests and the bench
        self.reused = 0     # views kept from a pass before

    def views(self, machines: Mapping[str, Machine], usage: Mapping[str, MachineUsage]) -> dict[str, MachineView]:
        """Every machine's view, as ``build_views(machines, ..., usage)`` gives it, in the same order."""
        kept = self._views
        out: dict[str, MachineView] = {}
        built = 0
        for mid in sorted(machines):
            m = machines[mid]
            u = usage.get(mid)
            v = kept.get(mid)
            if v is None or v.changed or v.record is not m or v.usage is not u:
                v = view_of(mid, m, u)
                built += 1
            out[mid] = v
        self._views = out
        self.built += built
        self.reused += len(out) - built
        return out


def release(views: dict[str, MachineView], p: Placement) -> None:
    """Give back what a stopped or preempted placement held."""
    v = views.get(p.machine)
    if v is None or not p.holds_resources():
        return
    v.give({k: p.resources.get(k, 0) for k in RESOURCES}, p.ports, (p.job, p.version) if p.desired == "run" else None)
