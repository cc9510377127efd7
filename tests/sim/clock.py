"""Simulated time and seeded randomness, patched into pysyncobj only while a simulation runs.

pysyncobj reads time through the module-level name ``monotonicTime`` (syncobj.py and transport.py)
and draws election timeouts from the module ``random``. Inside :func:`patched` both come from the
simulation: a :class:`SimClock` that only moves when the simulation advances it, and one
``random.Random(seed)``. The pipe notifier (a real pipe pysyncobj writes to wake its poller when a
command is queued) is switched off: with ``autoTick=False`` the simulation ticks every node itself,
so nothing waits on the poller (``doTick(0)`` polls with a zero timeout). Everything is restored on
exit, also when the run raises.
"""
from __future__ import annotations

import contextlib
import importlib
import random
import sys
from typing import Iterator


class SimClock:
    """Seconds since the start of the simulation; moves by :meth:`advance`, and by itself in a runaway loop.

    Time stands still within a step, except for code that keeps reading the clock: pysyncobj bounds some
    loops only by elapsed time (``__sendAppendEntries`` stops after ``appendEntriesPeriod``), so a
    frozen clock would make such a loop spin forever. Past ``free_reads`` reads since the last advance,
    every read costs ``read_cost`` seconds (deterministic: it depends only on the count of reads).
    """

    def __init__(self, start: float = 1000.0, free_reads: int = 2000, read_cost: float = 0.001) -> None:
        self.now = start
        self.free_reads = free_reads
        self.read_cost = read_cost
        self.reads = 0
        self.runaway_reads = 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads > self.free_reads:
            self.now += self.read_cost
            self.runaway_reads += 1
        return self.now

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError("time does not go back")
        self.now += dt
        self.reads = 0


class _SeededRandomModule:
    """Stands in for the ``random`` module inside pysyncobj: the functions it uses, one seeded source."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.random = rng.random
        self.randint = rng.randint
        self.uniform = rng.uniform
        self.choice = rng.choice
        self.shuffle = rng.shuffle


# Modules whose time and randomness the simulation owns. raftctl.node.raft.* modules are included
# when they exist (the replication overrides may read the clock or draw timeouts too).
_CLOCK_MODULES = ("pysyncobj.syncobj", "pysyncobj.transport")
_RAFT_PACKAGE = "raftctl.node.raft"


def _patch_targets() -> list[object]:
    mods = [importlib.import_module(name) for name in _CLOCK_MODULES]
    mods += [m for name, m in sorted(sys.modules.items())
             if m is not None and (name == _RAFT_PACKAGE or name.startswith(_RAFT_PACKAGE + "."))]
    return mods


@contextlib.contextmanager
def patched(clock: SimClock, rng: random.Random) -> Iterator[None]:
    """Point pysyncobj's clock and randomness at the simulation's; restore them afterwards."""
    saved: list[tuple[object, str, object]] = []

    def put(obj: object, name: str, value: object) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    fake_random = _SeededRandomModule(rng)
    try:
        for mod in _patch_targets():
            if hasattr(mod, "monotonicTime"):
                put(mod, "monotonicTime", clock)
            if getattr(mod, "random", None) is random:
                put(mod, "random", fake_random)
        syncobj = importlib.import_module("pysyncobj.syncobj")
        put(syncobj, "PIPE_NOTIFIER_ENABLED", False)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
