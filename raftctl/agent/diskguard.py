"""Disk pressure on one machine: what each container has written, and which containers the agent evicts.

A container writes to disk through its private ``/data`` and, with ``read_only_root: false``, its root's
writable layer (the overlay's upper directory); neither has a size limit, so one tenant could fill the agent's
filesystem and with it every other container's ``/data`` and, where a control replica shares the disk, the Raft
journal. As the kubelet does for ``nodefs.available``, the agent watches the free space of the filesystem that
holds its data dir and, when it falls below ``--disk-reserve``, evicts the containers that wrote the most (largest
first, until what they hold would bring the free space back above the reserve): each is stopped, reported
``exited`` with the reason ``evicted: ...``, and its writable layers are removed at once (space back); its restart
policy then decides whether it runs again (with an empty ``/data``, as after any restart here).

``measure`` walks a container's writable directories on a worker thread, bounded by ``MAX_ENTRIES``: a tenant that
makes millions of files is counted as far as the bound and ranked by what was counted. ``evictions`` is the pure
decision. ``DiskGuard.run`` is the agent's supervised loop (every ``every_s``; an exception is logged and the loop
goes on).
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from raftctl.agent.supervisor import Supervised
from raftctl.clock import Clock
from raftctl.errors import ValidationError
from raftctl.statemachine.units import parse_size

log = logging.getLogger("raftctl.agent.disk")

MAX_ENTRIES = 200_000        # directory entries one container's walk looks at, at most
EVICT_FLOOR = 1 << 20        # a container that wrote less than this is never evicted: it would free nothing
CHECK_EVERY_S = 10.0         # the kubelet's housekeeping period


@dataclass(frozen=True)
class Usage:
    """What a container holds on disk: bytes allocated (st_blocks, so sparse files count what they use, a file
    with several links once), the entries walked, and whether the walk stopped at MAX_ENTRIES."""
    bytes: int
    entries: int
    partial: bool = False


@dataclass(frozen=True)
class Filesystem:
    free: int    # bytes available to unprivileged writers (statvfs f_bavail)
    total: int


def parse_reserve(text: str, field: str = "--disk-reserve") -> tuple[str, float]:
    """``"10%"`` -> ("percent", 10.0); ``"2Gi"``, ``"500M"``, ``"0"`` -> ("bytes", n): ``"0"`` turns eviction off.
    A ValidationError naming ``field`` otherwise."""
    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise ValidationError(f"{text!r} is not a percentage; use e.g. 10%", field=field) from None
        if not 0 <= pct < 100:
            raise ValidationError(f"{text!r}: a percentage of the filesystem must be from 0 to under 100",
                                  field=field)
        return "percent", pct
    return "bytes", float(parse_size(t, field))


def reserve_bytes(reserve: tuple[str, float], total: int) -> int:
    kind, value = reserve
    return int(total * value / 100) if kind == "percent" else int(value)


def filesystem(path: str) -> Filesystem:
    st = os.statvfs(path)
    return Filesystem(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


def measure(paths: list[str], max_entries: int = MAX_ENTRIES) -> Usage:
    """The bytes allocated under ``paths`` (symlinks not followed, other filesystems not entered, each inode once),
    walking at most ``max_entries`` entries."""
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, int]] = []
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            stack.append((p, st.st_dev))
    while stack:
        path, dev = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue   # removed meanwhile, or unreadable: what is not there holds nothing
        with it:
            for e in it:
                entries += 1
                if entries > max_entries:
                    return Usage(total, entries - 1, partial=True)
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                    stack.append((e.path, dev))
    return Usage(total, entries)


def evictions(usages: Mapping[str, Usage], fs: Filesystem, reserve: int, *,
              floor: int = EVICT_FLOOR) -> dict[str, str]:
    """The containers to evict, each with its reason: none while ``fs.free`` is at least ``reserve``; otherwise the
    largest writers first (ties by id), each holding at least ``floor`` bytes, until the free space plus what they
    hold reaches the reserve."""
    if reserve <= 0 or fs.free >= reserve:
        return {}
    out: dict[str, str] = {}
    freed = 0
    for cid, u in sorted(usages.items(), key=lambda kv: (-kv[1].bytes, kv[0])):
        if fs.free + freed >= reserve or u.bytes < floor:
            break
        counted = f"{_mib(u.bytes)}{' (or more: too many files to count)' if u.partial else ''}"
        out[cid] = (f"evicted: disk pressure on the machine ({_mib(fs.free)} free of {_mib(fs.total)}, below the "
                    f"reserve of {_mib(reserve)}); this container had written {counted} to /data and its root")
        freed += u.bytes
    return out


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class DiskGuard:
    """The disk pressure check of one agent: ``paths(id)`` are a container's writable directories (the driver's
    ``writable_paths``), ``data_dir`` the directory whose filesystem is watched; ``containers`` the agent's
    supervised containers (an eviction sets ``Supervised.evict``; the container's supervisor stops it)."""

    def __init__(self, paths: Callable[[str], list[str]], containers: Mapping[str, Supervised], data_dir: str,
                 reserve: tuple[str, float], clock: Clock, *, every_s: float = CHECK_EVERY_S,
                 on_evict: Callable[[Supervised, str], None] | None = None) -> None:
        self.paths = paths
        self.containers = containers
        self.data_dir = data_dir
        self.reserve = reserve
        self.clock = clock
        self.every_s = every_s
        self.on_evict = on_evict
        self.last_fs: Filesystem | None = None
        self.last_usage: dict[str, Usage] = {}
        self.evicted = 0

    def _measure_all(self, ids: list[str]) -> tuple[Filesystem, dict[str, Usage]]:
        fs = filesystem(self.data_dir)
        if reserve_bytes(self.reserve, fs.total) <= 0:
            return fs, {}
        return fs, {cid: measure(self.paths(cid)) for cid in ids}

    async def check(self) -> dict[str, str]:
        """One pass: measure (on a worker thread), decide, mark the containers to evict; the evictions made."""
        running = [cid for cid, s in list(self.containers.items())
                   if s.state == "running" and not s.stopping and s.evict is None]
        loop = asyncio.get_running_loop()
        fs, usages = await loop.run_in_executor(None, self._measure_all, running)
        self.last_fs, self.last_usage = fs, usages
        reserve = reserve_bytes(self.reserve, fs.total)
        chosen = evictions(usages, fs, reserve)
        if fs.free < reserve and not chosen:
            log.warning("disk pressure: %s free of %s on %s, below the reserve of %s, and no container holds %s or "
                        "more to evict", _mib(fs.free), _mib(fs.total), self.data_dir, _mib(reserve), _mib(EVICT_FLOOR))
        for cid, reason in chosen.items():
            sup = self.containers.get(cid)
            if sup is None or sup.stopping or sup.evict is not None:
                continue
            log.warning("container %s %s", cid, reason)
            sup.evict = reason
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(sup, reason)
        return chosen

    async def run(self) -> None:
        """A pass at once, then every ``every_s`` of the clock, forever; a failed pass is logged and the next one
        runs."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("disk pressure check failed; trying again in %.0f s", self.every_s)
            await self.clock.sleep(self.every_s)

