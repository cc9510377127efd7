"""The machines as one scheduling pass sees them: free resources and ports, replicas per job, fault domains.

Views are built once per pass from each machine's usage (the state's index, ``State.usage``, or computed from the
placements by the same function) and updated in place as the pass places, stops and preempts."""
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

    def empty(self) -> bool:
        """Holds nothing: all its resources free, no port taken."""
        return self.free == self.capacity and not self.ports

    def domain(self, level: str) -> str:
        return self.dom.get(level, "")

    def take_ports(self, ports: dict[str, int]) -> None:
        lo, hi = self.record.ports
        for port in ports.values():
            if port not in self.ports:
                self.ports.add(port)
                if lo <= port <= hi:
                    self.free_ports -= 1

    def give_ports(self, ports: dict[str, int]) -> None:
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
    views = {}
    for mid in sorted(machines):
        m = machines[mid]
        lo, hi = m.ports
        u = usage.get(mid)
        if u is None:
            views[mid] = MachineView(mid, m, dict(m.resources), dict(m.resources), set(), Counter(),
                                     dict(m.fault_domain), hi - lo + 1)
            continue
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
        views[mid] = MachineView(mid, m, free, dict(m.resources), set(ports), by_job, dict(m.fault_domain),
                                 hi - lo + 1 - inside)
    return views


def release(views: dict[str, MachineView], p: Placement) -> None:
    """Give back what a stopped or preempted placement held."""
    v = views.get(p.machine)
    if v is None or not p.holds_resources():
        return
    for k in RESOURCES:
        v.free[k] += p.resources.get(k, 0)
    v.give_ports(p.ports)
    if p.desired == "run":
        v.by_job[(p.job, p.version)] -= 1
