"""Reading a container's cgroup: v1 (one hierarchy per controller) or v2 (unified)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from raftctl.agent.runtime.base import Stats

CGROUP_ROOT = "/sys/fs/cgroup"
NO_LIMIT = 1 << 62


def is_v2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


_v1_mounts: dict[str, str] = {}


def v1_mounts() -> dict[str, str]:
    """controller -> mount point, from /proc/self/mountinfo. Read once (the hierarchies are mounted at boot; an
    empty answer is read again): it was read twice per container create and once per container per stats pass,
    about 1 ms each, 43 % of a create (cProfile, 30 creates). Callers must not change the dict."""
    if _v1_mounts:
        return _v1_mounts
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if not fields or fields[0] != "cgroup":
                continue
            point = left.split()[4]
            for opt in fields[2].split(","):
                if opt in ("cpu", "cpuacct", "memory", "pids", "freezer", "cpuset", "devices", "blkio"):
                    out.setdefault(opt, point)
    _v1_mounts.update(out)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(path: str, default: int = 0) -> int:
    text = _read(path)
    if text is None:
        return default
    text = text.strip()
    if text == "max":
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return default


def _kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


@dataclass
class Cgroup:
    """A container's cgroup, named by the runc ``cgroupsPath`` (``/raftctl-<cluster>/<machine>/<placement>``,
    base.cgroup_path: under every controller's hierarchy with v1, under the unified one with v2)."""
    path: str
    v2: bool
    mounts: dict[str, str]

    @classmethod
    def of(cls, path: str) -> "Cgroup":
        v2 = is_v2()
        return cls(path="/" + path.strip("/"), v2=v2, mounts={} if v2 else v1_mounts())

    def dir(self, controller: str) -> str:
        base = CGROUP_ROOT if self.v2 else self.mounts.get(controller, os.path.join(CGROUP_ROOT, controller))
        return base + self.path

    def exists(self) -> bool:
        return os.path.isdir(self.dir("memory"))

    def stats(self) -> Stats:
        if self.v2:
            d = self.dir("")
            cpu = _kv(os.path.join(d, "cpu.stat"))
            return Stats(cpu_usage_ns=cpu.get("usage_usec", 0) * 1000, memory_bytes=_int(os.path.join(d, "memory.current")),
                         memory_limit=_int(os.path.join(d, "memory.max"), NO_LIMIT),
                         pids=_int(os.path.join(d, "pids.current")),
                         throttled_ns=cpu.get("throttled_usec", 0) * 1000)
        mem = self.dir("memory")
        return Stats(cpu_usage_ns=_int(os.path.join(self.dir("cpuacct"), "cpuacct.usage")),
                     memory_bytes=_int(os.path.join(mem, "memory.usage_in_bytes")),
                     memory_limit=_int(os.path.join(mem, "memory.limit_in_bytes"), NO_LIMIT),
                     pids=_int(os.path.join(self.dir("pids"), "pids.current")),
                     throttled_ns=_kv(os.path.join(self.dir("cpu"), "cpu.stat")).get("throttled_time", 0))

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (v1 oom_control, v2 memory.events)."""
        if self.v2:
            return _kv(os.path.join(self.dir(""), "memory.events")).get("oom_kill", 0)
        return _kv(os.path.join(self.dir("memory"), "memory.oom_control")).get("oom_kill", 0)

    def memory_failcnt(self) -> int:
        if self.v2:
            return _kv(os.path.join(self.dir(""), "memory.events")).get("max", 0)
        return _int(os.path.join(self.dir("memory"), "memory.failcnt"))

    def pids_max_hits(self) -> int:
        d = self.dir("") if self.v2 else self.dir("pids")
        return _kv(os.path.join(d, "pids.events")).get("max", 0)

    def memory_dir(self) -> str:
        return self.dir("") if self.v2 else self.dir("memory")


def memsw_available() -> bool:
    """v1 with swap accounting: the OCI ``memory.swap`` limit can be set."""
    if is_v2():
        return os.path.exists(os.path.join(CGROUP_ROOT, "init.scope", "memory.swap.max"))
    return os.path.exists(os.path.join(v1_mounts().get("memory", CGROUP_ROOT + "/memory"), "memory.memsw.limit_in_bytes"))


def children(path: str) -> list[str]:
    """The cgroups directly under ``path`` (e.g. ``/raftctl-<cluster>/<machine>``: that machine's containers),
    read from the memory hierarchy (v1) or the unified one (v2); [] when there is none."""
    d = Cgroup.of(path).memory_dir()
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def hierarchies() -> list[str]:
    """Every mounted cgroup hierarchy (v1: one per controller set, named ones and the unified one; v2: one)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if fields and fields[0] in ("cgroup", "cgroup2"):
                out.append(left.split()[4])
    return sorted(set(out))


def remove_if_empty(path: str) -> None:
    """rmdir the cgroup ``path`` in every hierarchy where it exists and holds no process and no child cgroup
    (the kernel refuses otherwise: EBUSY/ENOTEMPTY, ignored)."""
    for root in hierarchies():
        try:
            os.rmdir(root + "/" + path.strip("/"))
        except OSError:
            pass
