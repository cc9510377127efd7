"""The agent's side of a start's path (issue 15: job PUT -> placement healthy): an assignment answer starts its
new placements without waiting for the driver's listing, and a placement the driver holds no container of is
created without a remove first."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from raftctl.agent.config import AgentConfig
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.base import ContainerSpec
from raftctl.agent.runtime.sim import SimDriver
from tests.agent.test_assignments import WEB, placement
from tests.agent.test_watchtarget import watching

LISTING_PATIENCE_S = 5.0   # a guard against a hang, never a measurement


class Recording(SimDriver):
    inline = False   # its listing blocks like a slow `runc list`: called on a worker thread, as runc's is

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.created = threading.Event()
        self.listing_waits = False
        self.created_while_listing: list[bool] = []

    def create(self, spec: ContainerSpec) -> str:
        self.calls.append(("create", spec.id))
        out = super().create(spec)
        self.created.set()
        return out

    def remove(self, id: str) -> None:
        self.calls.append(("remove", id))
        super().remove(id)

    def list_existing(self) -> list[str]:
        if self.listing_waits:    # a slow `runc list`: does the start go on meanwhile?
            self.created_while_listing.append(self.created.wait(LISTING_PATIENCE_S))
        return super().list_existing()


def agent(tmp_path: Any) -> tuple[Agent, Recording]:
    cfg = AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path))
    driver = Recording()
    return Agent(cfg, driver), driver


async def settle(a: Agent) -> None:
    tasks = [s.task for s in a.containers.values() if s.task]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until_created(driver: Recording, pid: str) -> None:
    for _ in range(1000):
        if ("create", pid) in driver.calls:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{pid} was never created: {driver.calls}")


async def test_a_new_placement_is_created_while_the_drivers_listing_is_still_running(tmp_path):
    a, driver = agent(tmp_path)
    await a._adopt()
    driver.listing_waits = True
    try:
        await a.converge([placement("web-1", WEB)])
        assert driver.created_while_listing == [True]
    finally:
        await settle(a)


async def test_a_placement_without_a_container_is_created_without_a_remove(tmp_path):
    a, driver = agent(tmp_path)
    await a._adopt()
    try:
        await a.converge([placement("web-1", WEB)])
        await until_created(driver, "web-1")
        assert [c for c in driver.calls if c[1] == "web-1"][:1] == [("create", "web-1")]
    finally:
        await settle(a)


async def test_a_placement_whose_container_the_driver_lists_is_removed_before_it_is_created(tmp_path):
    a, driver = agent(tmp_path)
    await a._adopt()
    # a container of web-2 appeared after the agent's start (listed by the next reconcile pass)
    driver.create(ContainerSpec(id="web-2", job="web", replica=0, image="w", rootfs="", command=["w"],
                                log_dir=str(tmp_path)))
    await a._observe()
    driver.calls.clear()
    try:
        await a.converge([placement("web-2", WEB)])
        await until_created(driver, "web-2")
        assert [c for c in driver.calls if c[1] == "web-2"][:2] == [("remove", "web-2"), ("create", "web-2")]
    finally:
        await settle(a)


async def test_a_start_is_not_held_back_by_another_pass_awaiting_its_listing(tmp_path):
    """The reconcile pass holds the converge lock through a listing every second: an assignment answer arriving
    meanwhile starts its placement at once, and the listing pass, deciding its stops after, keeps it running."""
    a, driver = agent(tmp_path)
    await a._adopt()
    driver.listing_waits = True
    try:
        reconcile = asyncio.create_task(a.converge_typed([], report=False))   # parks in its listing
        await asyncio.sleep(0)
        await a.converge([placement("web-1", WEB)])
        await reconcile
        assert driver.created_while_listing[0] is True
        assert a.stopper.in_flight() == {} and a.containers["web-1"].task is not None
        assert not a.containers["web-1"].task.done() and driver.status("web-1").state in ("created", "running")
    finally:
        await settle(a)


class Answers:
    """The control client's side of the watch loop: the first watch is answered with ``first``; every later one
    is recorded (with whether the driver's listing was still running when it went out) and parks."""

    def __init__(self, first: dict[str, Any], driver: "BlockedListing") -> None:
        self.live, self.servers = "http://r1", ["http://r1"]
        self.first, self.driver = first, driver
        self.asked: list[bool] = []        # per watch after the first: had the listing not returned yet?

    async def watch(self, path: str, params: dict[str, str], *, timeout: float, server: str | None = None):
        if int(params["index"]) < self.first["index"]:
            return self.first, server
        self.asked.append(not self.driver.returned)
        await asyncio.Event().wait()

    async def live_moved_from(self, url: str | None) -> None:
        await asyncio.Event().wait()

    def avoid(self, url: str) -> None:
        pass


class BlockedListing(SimDriver):
    inline = False   # listed on a worker thread, as runc is

    def __init__(self) -> None:
        super().__init__()
        self.blocks = False            # from the first answer on (not while the agent adopts at its start)
        self.returned = False          # a blocked listing has returned (not "is running": under CI load the
        self.release = threading.Event()  # watch went out before the worker thread had begun the listing)

    def list_existing(self) -> list[str]:
        if self.blocks:
            self.release.wait(LISTING_PATIENCE_S)
            self.returned = True
        return super().list_existing()


async def test_the_next_watch_is_parked_while_the_answers_stops_still_await_the_listing(tmp_path):
    """An answer's starts go at once and its stops wait for a listing of the driver's containers (a `runc list`,
    20-50 ms under load): the watch for the next change goes out before that listing returns, so a change
    committed meanwhile (the next job's Plan) is answered when it is applied, not after the listing."""
    cfg = AgentConfig(machine="m1", servers=["http://r1"], token="t", data_dir=str(tmp_path))
    driver = BlockedListing()
    a = Agent(cfg, driver)
    await a._adopt()
    driver.blocks = True
    control = Answers({"index": 11, "placements": [placement("web-1", WEB)]}, driver)
    task = watching(a, control)
    try:
        for _ in range(1000):
            if control.asked:
                break
            await asyncio.sleep(0.005)
        assert control.asked == [True]          # the second watch went out before the listing returned
        assert a.index == 11 and "web-1" in a.containers   # the answer's start did not wait either
        driver.release.set()
        for _ in range(1000):                   # and the stops half still ran, once the listing returned
            if a._settler is not None and a._settler.done():
                break
            await asyncio.sleep(0.005)
        assert a._settler is not None and a._settler.done() and a.existing is not None
    finally:
        driver.release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await settle(a)
