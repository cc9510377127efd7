"""The process driver: containers are plain child processes. NOTHING IS ISOLATED.

For machines without root or runc (laptops, CI without privileges). Each process runs
under a detached shim (shim.py) so its exit code survives an agent restart and running
processes can be re-adopted; it gets its own process group, its env and log files, and
nothing else: no namespaces, no cgroup limits, no read-only root, the agent's own user.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import AbstractSet, Any

import psutil

from raftctl.agent.images import ImageStore
from raftctl.agent.runtime import logs
from raftctl.agent.runtime.base import (ID_RE, ContainerSpec, Driver, Observed, RuntimeError_, Stats, WaitClock,
                                        wait_until)
from raftctl.agent.runtime.runc import spawn_shim

log = logging.getLogger("raftctl.agent.process")
WARNING = ("runtime 'process': containers are plain processes; NOTHING IS ISOLATED "
           "(no namespaces, no cgroup limits, no read-only root, same user as the agent). Development only.")

_warned = threading.Lock()  # held forever once the warning went out: once per process


def warn_once() -> None:
    """Say NOTHING IS ISOLATED once per process, however many drivers it builds: one log
    record (logging's last-resort handler prints it on stderr when logging is not set up)."""
    if _warned.acquire(blocking=False):
        log.warning(WARNING)


class ProcessDriver(Driver):
    name = "process"
    isolated = False

    def __init__(self, data_dir: str, images: ImageStore | None = None, *, python: str = sys.executable,
                 wait_clock: WaitClock | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.containers_dir = os.path.join(self.data_dir, "processes")
        os.makedirs(self.containers_dir, exist_ok=True)
        self.images = images or ImageStore(os.path.join(self.data_dir, "images"))
        self.python = python
        if wait_clock is not None:
            self.wait_clock = wait_clock
        warn_once()

    def dir(self, id: str) -> str:
        if not ID_RE.match(id):
            raise RuntimeError_(f"container id {id!r} is not valid")
        return os.path.join(self.containers_dir, id)

    def _read(self, id: str, name: str) -> str | None:
        try:
            with open(os.path.join(self.dir(id), name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def writable_paths(self, id: str) -> list[str]:
        """Its directory (the working directory of a command without an image root); the process runtime is not
        isolated, so what it writes elsewhere is not counted."""
        return [self.dir(id)]

    def prepare_image(self, digest: str) -> str:
        return self.images.unpack(self.images.resolve(digest))

    def collect_images(self, in_use: AbstractSet[str], grace_s: float, now: float) -> list[str]:
        return self.images.gc(in_use, now, grace_s)

    def create(self, spec: ContainerSpec) -> str:
        d = self.dir(spec.id)
        if os.path.exists(d):
            raise RuntimeError_(f"container {spec.id} already exists")
        os.makedirs(d)
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec.to_dict(), f, sort_keys=True)
        logs.prepare(spec.log_dir)
        return spec.id

    def start(self, id: str) -> None:
        spec = self.spec_of(id)
        if spec is None:
            raise RuntimeError_(f"no container {id}")
        d = self.dir(id)
        streams = logs.paths(spec.log_dir)
        env = dict(spec.env)
        if os.path.isdir(spec.rootfs):
            env["RAFTCTL_ROOT"] = spec.rootfs
            env["PATH"] = os.path.join(spec.rootfs, "bin") + os.pathsep + env.get("PATH", "")
        cfg: dict[str, Any] = {"mode": "process", "state_dir": d, "stdout": streams["stdout"],
                               "stderr": streams["stderr"], "pid_file": os.path.join(d, "init.pid"),
                               "argv": spec.command, "env": env,
                               "cwd": spec.rootfs if os.path.isdir(spec.rootfs) else d}
        with open(os.path.join(d, "started_at"), "w") as f:
            f.write(repr(time.time()))
        pid = spawn_shim(self.python, d, cfg)
        if isinstance(pid, str):
            raise RuntimeError_(f"could not start {id}: {pid}: {logs.tail(spec.log_dir, 'stderr', 2000)}")

    def _pid(self, id: str) -> int | None:
        text = self._read(id, "init.pid")
        return int(text) if text else None

    def kill(self, id: str, sig: int = signal.SIGKILL) -> None:
        pid = self._pid(id)
        if pid is None or self._read(id, "exit.json"):
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    def _wait_exit(self, id: str, timeout: float) -> bool:
        path = os.path.join(self.dir(id), "exit.json")
        return wait_until(lambda: os.path.exists(path), timeout, self.wait_clock)

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        if self.status(id).state != "running":
            return self.status(id)
        self.kill(id, signal.SIGTERM)
        if not self._wait_exit(id, grace_s):
            self.kill(id, signal.SIGKILL)
            self._wait_exit(id, 5.0)
        return self.status(id)

    def status(self, id: str) -> Observed:
        if not os.path.isdir(self.dir(id)):
            return Observed("missing")
        started = self._read(id, "started_at")
        started_at = float(started) if started else None
        exit_text = self._read(id, "exit.json")
        if exit_text:
            info = json.loads(exit_text)
            return Observed("exited", pid=info.get("pid"), exit_code=info.get("code"), started_at=started_at)
        pid = self._pid(id)
        if pid is None:
            return Observed("created")
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and (started_at is None or p.create_time() >= started_at - 5):
                return Observed("running", pid=pid, started_at=started_at)
        except psutil.NoSuchProcess:
            pass
        if self._wait_exit(id, 1.0):
            return self.status(id)
        return Observed("exited", pid=pid, started_at=started_at, reason="exit code unknown: the shim is gone")

    def stats(self, id: str) -> Stats:
        pid = self._pid(id)
        cpu = mem = n = 0
        try:
            root = psutil.Process(pid) if pid else None
            procs = [root, *root.children(recursive=True)] if root else []
            for p in procs:
                try:
                    t = p.cpu_times()
                    cpu += int((t.user + t.system) * 1e9)
                    mem += p.memory_info().rss
                    n += 1
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return Stats(cpu_usage_ns=cpu, memory_bytes=mem, memory_limit=0, pids=n, throttled_ns=0)

    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        spec = self.spec_of(id)
        if spec is None:
            return 127, f"no container {id}"
        cwd = spec.rootfs if os.path.isdir(spec.rootfs) else None
        try:
            r = subprocess.run(argv, cwd=cwd, env=spec.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout)
            return r.returncode, r.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            return 124, (exc.stdout or b"").decode(errors="replace")
        except OSError as exc:
            return 127, str(exc)

    def list_existing(self) -> list[str]:
        return sorted(n for n in os.listdir(self.containers_dir)
                      if os.path.exists(os.path.join(self.containers_dir, n, "spec.json")))

    def spec_of(self, id: str) -> ContainerSpec | None:
        text = self._read(id, "spec.json")
        return ContainerSpec.from_dict(json.loads(text)) if text else None

    def rotate_logs(self, id: str) -> None:
        spec = self.spec_of(id)
        if spec:
            logs.rotate(spec.log_dir, spec.log_max_bytes, spec.log_keep)

    def remove(self, id: str) -> None:
        if self.status(id).state == "running":
            self.stop(id, 0.5)
        shutil.rmtree(self.dir(id), ignore_errors=True)
