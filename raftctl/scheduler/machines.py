"""The machines as one scheduling pass sees them: free resources and ports, replicas per job, fault domains.

Views are built once per pass from the state and updated in place as the pass places, stops and preempts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from typing import Mapping

from raftctl.scheduler.plan import RESOURCES
from raftctl.statemachine.records import Machine, Placement


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


def build_views(machines: Mapping[str, Machine], placements: Mapping[str, Placement]) -> dict[str, MachineView]:
    views = {}
    for mid in sorted(machines):
        m = machines[mid]
        lo, hi = m.ports
        views[mid] = MachineView(mid, m, dict(m.resources), dict(m.resources), set(), Counter(),
                                 dict(m.fault_domain), hi - lo + 1)
    for p in placements.values():
        v = views.get(p.machine)
        if v is None or not p.holds_resources():
            continue
        res = p.resources
        for k in RESOURCES:
            v.free[k] -= res.get(k, 0)
        v.take_ports(p.ports)
        if p.desired == "run":
            v.by_job[(p.job, p.version)] += 1
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
