from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from raftctl.agent.images import ImageStore
from raftctl.agent.runtime.base import ContainerSpec, Resources
from raftctl.agent.testimage import busybox_available, make_busybox_dir
from raftctl.clock import FakeClock
from raftctl.statemachine.records import JobSpec, from_wire
from tests.skips import skip_loudly


class CountedClock(FakeClock):
    """raftctl's FakeClock that ends the loop under test: its sleep number ``stop_after`` (counting from 0)
    raises CancelledError instead of sleeping."""

    def __init__(self, stop_after: int = 10**9) -> None:
        super().__init__()
        self.stop_after = stop_after

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) == self.stop_after:
            raise asyncio.CancelledError
        await super().sleep(seconds)


def job_spec(**fields: Any) -> JobSpec:
    """A job spec record, as the agent holds it once an assignment arrived: a small job with ``fields`` (in their
    wire form: ``interval_ms``, ``{"exec": [...], "timeout_ms": 3000}``) over it."""
    return from_wire(JobSpec, {"name": "w", "image": "w:1", "command": ["w"], "replicas": 1, **fields})


def root_runc_problem() -> str | None:
    """Why the root/runc tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc, or `make deps` as root)"
    if not busybox_available():
        return "busybox-static is not installed (/usr/bin/busybox)"
    if not os.path.isdir("/sys/fs/cgroup"):
        return "no /sys/fs/cgroup"
    return None


@pytest.fixture(scope="session")
def root_runc() -> None:
    """Skip LOUDLY when the isolation tests cannot run: they are the proof of §1's isolation."""
    problem = root_runc_problem()
    if problem:
        skip_loudly("RUNC ISOLATION TESTS", problem, "Container isolation")


def wait_for(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last {last!r}")


@pytest.fixture(scope="module")
def busybox_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageStore, str]:
    if not busybox_available():
        pytest.skip("busybox-static is not installed")
    base = tmp_path_factory.mktemp("images")
    store = ImageStore(str(base / "store"))
    digest = store.build(make_busybox_dir(str(base / "src")), "busybox:test")
    return store, digest


@pytest.fixture(scope="module")
def runc_driver(root_runc: None, tmp_path_factory: pytest.TempPathFactory,
                busybox_store: tuple[ImageStore, str]) -> Iterator[Any]:
    from raftctl.agent.runtime.runc import RuncDriver
    data = tmp_path_factory.mktemp("runc")
    store, _ = busybox_store
    drv = RuncDriver(str(data), store)
    yield drv
    for id in drv.list_existing():
        drv.remove(id)
    drv.close()


@pytest.fixture
def make_spec(busybox_store: tuple[ImageStore, str], tmp_path: Any) -> Callable[..., ContainerSpec]:
    store, digest = busybox_store
    root = store.unpack(digest)

    def make(command: list[str], *, job: str = "job", replica: int = 0, **kw: Any) -> ContainerSpec:
        kw.setdefault("resources", Resources(cpu=500, memory=64 << 20, pids=64))
        id = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return ContainerSpec(id=id, job=job, replica=replica, image=digest, rootfs=kw.pop("rootfs", root),
                             command=command, log_dir=str(tmp_path / "logs" / id), **kw)
    return make
