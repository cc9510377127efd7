"""Ranking: scorers from 0 to 100, weighted, and a tie-break hashed from (job, state index, machine) so the
same state gives the same plan on every run.

- bin-pack: best fit on the dominant resource (the fuller the machine after placing, the better);
- soft spread: fewer of the job's replicas in the machine's fault domain is better;
- anti-affinity: fewer of the job's replicas on the machine is better (weighted to break ties only).
A hard spread is not a score but a limit (``Spread.violation``): at most ceil(replicas / domains) per domain."""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass

from raftctl.scheduler.machines import Candidates, MachineView
from raftctl.statemachine.records import JobSpec, Placement

WEIGHTS = {"binpack": 1.0, "spread": 0.7, "anti_affinity": 0.02}  # anti-affinity breaks ties only


def score_binpack(v: MachineView, spec: JobSpec) -> float:
    """Best fit on the dominant resource: the fuller the machine after placing, the better."""
    fullest = 0.0
    r, cap_, free = spec.resources, v.capacity, v.free
    for k, want in (("cpu", r.cpu), ("memory", r.memory), ("pids", r.pids)):
        cap = cap_[k] or 1
        used = (cap - free[k] + want) / cap
        if used > fullest:
            fullest = used
    return 100.0 * (fullest if fullest < 1.0 else 1.0)


def score_anti_affinity(v: MachineView, job: str, version: int) -> float:
    return 100.0 / (1 + v.by_job[(job, version)])


def score_spread(count_here: int, max_count: int) -> float:
    return 100.0 * (1 - count_here / (max_count + 1))


def tie(seed: bytes, machine: str) -> int:
    return int.from_bytes(hashlib.blake2b(seed + machine.encode(), digest_size=8).digest(), "big")


@dataclass
class Spread:
    """One job's live replicas (of its current version) per fault domain, for each of its spread rules, and
    the cap per domain of each hard rule."""
    rules: list[tuple[str, str]]                  # (level, "hard" | "soft"), in the spec's order
    counts: dict[str, Counter[str]]               # level -> domain -> replicas
    limit: dict[str, int]                         # hard levels -> replicas allowed per domain

    @classmethod
    def of(cls, spec: JobSpec, replicas: int, version: int, candidates: Candidates,
           views: dict[str, MachineView], placements: list[Placement]) -> Spread:
        rules: list[tuple[str, str]] = [(s.level, s.mode) for s in spec.spread if s.level]
        counts: dict[str, Counter[str]] = {level: Counter() for level, _ in rules}
        for p in placements:
            if p.is_live() and p.version == version and p.machine in views:
                for level, _ in rules:
                    counts[level][views[p.machine].domain(level)] += 1
        limit = {level: math.ceil(replicas / max(1, candidates.domains(level))) for level, mode in rules
                 if mode == "hard"}
        return cls(rules, counts, limit)

    def score(self, total: float, v: MachineView) -> float:
        """``total`` plus the weighted soft-spread scores of machine ``v``."""
        for level, mode in self.rules:
            if mode == "soft":
                c = self.counts[level]
                total += WEIGHTS["spread"] * score_spread(c[v.domain(level)], max(c.values(), default=0))
        return total

    def violation(self, v: MachineView) -> str | None:
        """Why one more replica on ``v`` would break a hard spread rule, or None."""
        for level, cap in self.limit.items():
            if self.counts[level][v.domain(level)] >= cap:
                return f"hard spread: {level} {v.domain(level) or '(none)'} already has {cap}"
        return None

    def add(self, v: MachineView) -> None:
        for level, _ in self.rules:
            self.counts[level][v.domain(level)] += 1
