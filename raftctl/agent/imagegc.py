"""Image garbage collection on one machine: which images are in use, and when the driver collects the rest.

In use: the images the containers supervised here run (or wait to restart with) and the images the last
assignment answer names. While a container's image is not known (adopted after an agent restart, before its
placement arrived) nothing is collected. The collection itself is the driver's (``Driver.collect_images``:
the image store's last-use stamps and locks); it runs on a worker thread every ``every_s`` (a tenth of the grace,
between the stats period and 60 s), on the injected clock: its monotonic time paces the passes, its wall
time is compared with the store's last-use stamps.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from raftctl.agent.runtime.base import Driver
from raftctl.agent.supervisor import PREPARE_S, Supervised
from raftctl.agent.supervisor import call_driver as _call
from raftctl.clock import Clock
from raftctl.statemachine.records import JobSpec

log = logging.getLogger("raftctl.agent")

GC_EVERY_MAX_S = 60.0


def image_digest(p: Mapping[str, Any]) -> str | None:
    """The manifest digest a placement's job version runs (resolved when the version was stored)."""
    spec: JobSpec = p["spec"]
    if isinstance(spec.image_digest, str):
        return spec.image_digest
    return spec.image if spec.image.startswith("sha256:") else None


def assigned_images(placements: Iterable[Mapping[str, Any]]) -> set[str]:
    """The images an assignment answer names."""
    return {d for p in placements if p.get("spec") is not None and (d := image_digest(p))}


def images_in_use(assigned: set[str], containers: Iterable[Supervised]) -> set[str] | None:
    """``assigned`` and the images of the supervised ``containers``; None while a container's image is unknown."""
    in_use = set(assigned)
    for sup in list(containers):
        if sup.placement.get("spec") is None:
            return None
        digest = image_digest(sup.placement)
        if digest is not None:
            in_use.add(digest)
    return in_use


def gc_period(after_s: float, floor_s: float = 2.0) -> float:
    """How often GC runs for a grace of ``after_s``: a tenth of it, at least ``floor_s``, at most a minute."""
    return min(GC_EVERY_MAX_S, max(floor_s, after_s / 10))


class ImageGC:
    """The GC of one agent. ``containers``: the agent's supervised containers (read, never changed);
    ``assigned``: set from each assignment answer (``note_assignment``); ``after_s``: the grace (0: never)."""

    def __init__(self, driver: Driver, containers: Mapping[str, Supervised], after_s: float, clock: Clock) -> None:
        self.driver = driver
        self.containers = containers
        self.after_s = after_s
        self.clock = clock
        self.assigned: set[str] = set()
        self._noted: Sequence[Mapping[str, Any]] | None = None   # the answer ``assigned`` was computed from

    def note_assignment(self, placements: Sequence[Mapping[str, Any]]) -> None:
        """Take the images an assignment answer names; the same answer again (every reconcile pass hands the last
        one over) is not walked again."""
        if placements is not self._noted:
            self.assigned = assigned_images(placements)
            self._noted = placements

    def in_use(self) -> set[str] | None:
        return images_in_use(self.assigned, self.containers.values())

    async def collect(self, now: float | None = None) -> list[str]:
        """One collection (``now``: wall-clock seconds, default the clock's); the images removed. Failures are
        logged: the next pass tries again."""
        if self.after_s <= 0:
            return []
        in_use = self.in_use()
        if in_use is None:
            log.info("image GC waits: a container's image is not known yet")
            return []
        try:
            at = self.clock.now_ms() / 1000 if now is None else now
            removed: list[str] = await _call(self.driver.collect_images, in_use, self.after_s, at, bound=PREPARE_S)
            return removed
        except Exception as exc:
            log.warning("image GC failed: %s", exc)
            return []

    async def run(self) -> None:
        """Collect every ``gc_period(after_s)`` seconds of the clock, forever (nothing while GC is off)."""
        while True:
            await self.clock.sleep(gc_period(self.after_s))
            await self.collect()
