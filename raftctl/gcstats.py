"""The cyclic garbage collector of a replica or fleet process: what it costs (a replica's ``/metrics``) and how often it runs.

py-spy of a follower in the 10,000-machine bed (issue 15) put 17 % of its samples in ``gc_collect_main``: every
connection and request makes container objects (handlers, transports, futures, tasks) that live long enough to be
promoted, so with CPython's default thresholds (700, 10, 10) the young generations are collected hundreds of times
a second and the old one, which holds every machine, job and placement record and every open connection, again
and again. ``tune`` raises the thresholds (``GC_THRESHOLDS``; ``RAFTCTL_GC_THRESHOLDS="a,b,c"`` overrides them for a
benchmark's comparison) and ``freeze`` moves what a replica holds once it is ready (the state replayed from its
disk) out of the collector's sight, as Instagram's and Meta's Python servers do. Reference cycles are still
collected, only less often.
"""
from __future__ import annotations

import gc
import os
import time
from typing import Any

__all__ = ["GC_THRESHOLDS", "GcStats", "freeze", "thresholds_from_env", "tune"]

GC_THRESHOLDS = (50_000, 20, 20)
"""gen0 collects after 50,000 net container allocations (not 700), gen1 after 20 gen0 collections, gen2 after 20
gen1 ones (and, as always, only once the objects promoted since the last full collection are 25 % of the old
generation)."""


def thresholds_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``RAFTCTL_GC_THRESHOLDS`` ("a,b,c", each a positive integer) or :data:`GC_THRESHOLDS`; ValueError names it."""
    raw = (os.environ if env is None else env).get("RAFTCTL_GC_THRESHOLDS")
    if not raw:
        return GC_THRESHOLDS
    parts = raw.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"RAFTCTL_GC_THRESHOLDS: {raw!r} is not three positive integers 'a,b,c'")
    a, b, c = (int(p) for p in parts)
    return a, b, c


def tune(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)


def freeze() -> None:
    """Everything alive now (the replayed state, the app, the modules) is left out of every later collection."""
    gc.collect()
    gc.freeze()


class GcStats:
    """Collections, seconds and objects collected per generation, from ``gc.callbacks`` (a callback runs in the
    thread whose allocation triggered the collection, under the GIL)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]     # the longest single collection: every thread waited that long (the GIL)
        # CPU time the collecting thread spent (time.thread_time): ``seconds`` is wall time, which on a busy machine
        # includes the time the process waited for a CPU while holding the GIL (10,000 machines on 2 cores: young
        # collections of 140-214 ms of wall time on average in the replicas, 40-65 ms of CPU; 5-25 ms in a quiet
        # process holding the same state)
        self.cpu_seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._started_cpu = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._started_cpu = time.thread_time()
            return
        g = info.get("generation", 2)
        took = time.perf_counter() - self._started
        self.cpu_seconds[g] += time.thread_time() - self._started_cpu
        self.collections[g] += 1
        self.seconds[g] += took
        self.longest[g] = max(self.longest[g], took)
        self.collected[g] += info.get("collected", 0)

    def install(self) -> "GcStats":
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
