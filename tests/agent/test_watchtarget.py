"""Where an agent parks its assignment watch: a follower by the machine's hash, fenced by the index the leader's
heartbeat answers tell (watchtarget.py); the leader when the leader does not tell it or no follower is left."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftctl.agent.config import AgentConfig
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.sim import SimDriver
from raftctl.agent.watchtarget import FOLLOWER_GRACE_S, SHUN_S, WatchTarget, follower_grace
from raftctl.clock import FakeClock

R1, R2, R3 = "http://r1", "http://r2", "http://r3"
SERVERS = [R1, R2, R3]


def told(value: Any) -> WatchTarget:
    t = WatchTarget("m1", FakeClock())
    t.note(value)
    return t


@pytest.mark.parametrize("value, kept", [
    (7, 7), (0, 0), (None, None), (-1, None), (True, None), (7.0, None), ("7", None), ({"index": 7}, None),
])
def test_only_a_non_negative_integer_is_the_leaders_word(value, kept):
    assert told(value).told == kept


@pytest.mark.parametrize("told_index, live, shunned, want", [
    (None, R1, [], R1),              # a leader that does not tell its index (the previous release): on the leader
    (5, None, [], None),             # no heartbeat answered yet: the replicas in turn
    (5, R1, [R2, R3], R1),           # no follower left: the leader
    (5, R2, [R1, R3], R2),
    (5, R1, [R1], "follower"),       # the leader shunned as a follower once: it is still not a follower now
])
def test_the_choice(told_index, live, shunned, want):
    t = told(told_index)
    for url in shunned:
        t.shun(url)
    got = t.choose(SERVERS, live)
    if want == "follower":
        assert got in (R2, R3)
    else:
        assert got == want


def test_machines_spread_over_the_followers_and_each_keeps_its_own():
    picks = [WatchTarget(f"m{i}", FakeClock()) for i in range(3000)]
    for t in picks:
        t.note(1)
    chosen = [t.choose(SERVERS, R1) for t in picks]
    share = chosen.count(R2) / len(chosen)
    assert R1 not in chosen and 0.45 < share < 0.55
    assert chosen == [t.choose(SERVERS, R1) for t in picks]          # stable between watches
    # the leader moves to r2: every machine's watch is on r1 or r3, and those that were on r3 ... stay there
    moved = [t.choose(SERVERS, R2) for t in picks]
    assert R2 not in moved and all(m == R3 for c, m in zip(chosen, moved) if c == R3)


def test_a_shunned_follower_is_passed_over_for_its_while_then_chosen_again():
    clock = FakeClock()
    t = WatchTarget("m1", clock)
    t.note(3)
    first = t.choose(SERVERS, R1)
    assert first is not None
    t.shun(first)
    other = t.choose(SERVERS, R1)
    assert other not in (first, R1)
    clock.advance(SHUN_S - 0.1)
    assert t.choose(SERVERS, R1) == other
    clock.advance(0.2)
    assert t.choose(SERVERS, R1) == first and t.shunned == {}


async def test_leader_ahead_returns_only_after_the_grace_and_only_if_still_ahead():
    clock = FakeClock()
    t = WatchTarget("m1", clock)
    t.note(10)
    waiting = asyncio.create_task(t.leader_ahead(10))
    await asyncio.sleep(0)
    assert not waiting.done()                       # the leader has nothing the agent lacks
    t.note(12)
    assert await waiting == 12
    assert clock.sleeps == [FOLLOWER_GRACE_S]

    class Caught(FakeClock):   # the watch brings the change during the grace: the heartbeat after says 10 again
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            if len(self.sleeps) == 1:
                t2.note(10)
            await asyncio.sleep(0)

    t2 = WatchTarget("m1", Caught())
    t2.note(11)
    pending = asyncio.create_task(t2.leader_ahead(10))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not pending.done()
    pending.cancel()


class Replicas:
    """The control client's side of the watch loop: r1 leads; ``silent`` replicas park a watch for ever (paused,
    cut off), ``stale`` ones answer an old index; the others answer ``answer``."""

    def __init__(self, answer: dict[str, Any], silent: frozenset[str] = frozenset(),
                 stale: frozenset[str] = frozenset()) -> None:
        self.live = R1
        self.servers = SERVERS
        self.answer = answer
        self.silent, self.stale = set(silent), set(stale)
        self.asked: list[str | None] = []

    async def watch(self, path: str, params: dict[str, str], *, timeout: float, server: str | None = None):
        self.asked.append(server)
        if server in self.silent:
            await asyncio.Event().wait()
        if server in self.stale:
            return {"index": 3, "placements": []}, server
        if int(params["index"]) >= self.answer["index"]:
            await asyncio.Event().wait()      # nothing newer: parks
        return self.answer, server

    async def live_moved_from(self, url: str | None) -> None:
        await asyncio.Event().wait()

    def avoid(self, url: str) -> None:
        pass


class TurnsClock(FakeClock):
    """A fake clock whose sleeps take 20 turns of the event loop: a replica that answers at once answers before
    a grace runs out; one that never answers does not."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        for _ in range(20):
            await asyncio.sleep(0)


def watching(a: Agent, control: Any, told: int | None = None) -> asyncio.Task:
    """``a``'s watch loop started against a fake control client, from index 10, the leader telling ``told``."""
    a.control = control
    a.index = 10
    a.target.note(told)
    return asyncio.create_task(a._watch_loop())


async def watched(replicas: Replicas, leader_told: int | None, until: Any) -> Agent:
    clock = TurnsClock()
    a = Agent(AgentConfig(machine="m1", servers=SERVERS, token="t", data_dir="/nonexistent"), SimDriver(), clock=clock)
    task = watching(a, replicas, leader_told)
    try:
        for _ in range(2000):
            if until(a):
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError(f"the watch loop never got there: asked {replicas.asked}, index {a.index}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return a


async def test_a_follower_that_does_not_bring_the_leaders_change_is_left_after_the_grace():
    """The paused replica of jepsen-style finding 4, now a follower: the leader's heartbeat told index 12, the
    watch parked on the follower brought nothing; after the grace the agent asks the other follower."""
    first = str(told(12).choose(SERVERS, R1))
    replicas = Replicas({"index": 12, "placements": []}, silent=frozenset({first}))
    a = await watched(replicas, 12, lambda a: a.index == 12)
    other = ({R2, R3} - {first}).pop()
    assert replicas.asked[:2] == [first, other] and set(replicas.asked[2:]) <= {other}
    assert list(a.target.shunned) == [first]
    assert a.clock.sleeps[0] == FOLLOWER_GRACE_S     # type: ignore[attr-defined]


async def test_a_follower_answering_below_what_was_seen_is_passed_over():
    first = str(told(10).choose(SERVERS, R1))
    replicas = Replicas({"index": 12, "placements": []}, stale=frozenset({first}))
    a = await watched(replicas, 10, lambda a: a.index == 12)
    assert replicas.asked[0] == first and set(replicas.asked[1:]) == {({R2, R3} - {first}).pop()}
    assert list(a.target.shunned) == [first]


async def test_a_leader_that_does_not_tell_its_index_keeps_the_watches():
    replicas = Replicas({"index": 12, "placements": []})
    await watched(replicas, None, lambda a: a.index == 12)
    assert set(replicas.asked) == {R1}


async def test_a_watch_parked_on_the_leader_before_the_index_was_told_moves_to_a_follower_when_it_is():
    """An agent's first watch goes out before its first heartbeat is answered, so to the leader; once a heartbeat
    answer tells the index, that watch is left for the follower the machine's hash names (it stayed on the leader
    for its whole wait, and the paused-watch-replica integration test then found its watch on the leader)."""
    replicas = Replicas({"index": 10, "placements": []})    # nothing newer than the agent's index: every watch parks
    clock = TurnsClock()
    a = Agent(AgentConfig(machine="m1", servers=SERVERS, token="t", data_dir="/nonexistent"), SimDriver(), clock=clock)
    task = watching(a, replicas)
    try:
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == [R1]                           # parked on the leader: nothing told yet
        a.target.note(10)                                       # the first heartbeat answer
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == [R1, told(10).choose(SERVERS, R1)]
        assert replicas.asked[1] != R1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class NotYetLive(Replicas):
    """No heartbeat answered yet: ``answered()`` plays the first answer (r1 leads and tells index 10)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(answer)
        self.live = None   # type: ignore[assignment]
        self._moved = asyncio.Event()

    def answered(self, target: WatchTarget) -> None:
        self.live = R1
        target.note(10)
        self._moved.set()

    async def live_moved_from(self, url: str | None) -> None:
        if url is not None:
            await asyncio.Event().wait()     # r1 leads from its first answer on
        await self._moved.wait()


def _starting(replicas: Replicas, clock: FakeClock) -> tuple[Agent, asyncio.Task]:
    a = Agent(AgentConfig(machine="m1", servers=SERVERS, token="t", data_dir="/nonexistent"), SimDriver(), clock=clock)
    return a, watching(a, replicas)


async def test_the_first_watch_waits_for_the_first_heartbeat_answer_and_goes_to_its_follower():
    """Sent before it, the first watch went to the replicas in turn and was left as soon as the answer came: one
    wasted connection and parked watch per starting machine."""
    class Stopped(FakeClock):   # its sleeps never end: only the heartbeat answer lets the watch go
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.Event().wait()

    replicas = NotYetLive({"index": 10, "placements": []})
    a, task = _starting(replicas, Stopped())
    try:
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == []
        replicas.answered(a.target)
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == [told(10).choose(SERVERS, R1)] and replicas.asked[0] != R1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_with_no_heartbeat_answered_in_two_intervals_the_first_watch_goes_in_turn():
    replicas = NotYetLive({"index": 10, "placements": []})
    clock = TurnsClock()
    a, task = _starting(replicas, clock)
    try:
        for _ in range(100):
            await asyncio.sleep(0)
        assert replicas.asked == [None] and clock.sleeps[0] == 2 * a.cfg.heartbeat_s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Moving(Replicas):
    """r1 leads until ``move_to`` names another leader; every watch parks (nothing newer than the agent's index)."""

    def __init__(self) -> None:
        super().__init__({"index": 10, "placements": []})
        self._moved = asyncio.Event()

    def move_to(self, url: str) -> None:
        self.live = url
        self._moved.set()

    async def live_moved_from(self, url: str | None) -> None:
        while self.live == url:
            self._moved.clear()
            await self._moved.wait()


def _machine_whose_choice_moves(before: str, live_after: str, after: str) -> str:
    """A machine name whose watch goes to ``before`` while r1 leads and to ``after`` once ``live_after`` does."""
    for i in range(1000):
        t = WatchTarget(f"m{i}", FakeClock())
        t.note(10)
        if t.choose(SERVERS, R1) == before and t.choose(SERVERS, live_after) == after:
            return f"m{i}"
    raise AssertionError("no such machine")


@pytest.mark.parametrize("before, live_after, after, left", [
    (R2, R3, R1, False),   # its follower r2 is still a follower: the watch stays (the next one goes to r1)
    (R3, R3, R2, True),    # its follower r3 now leads: the watch moves to a follower
])
async def test_a_new_leader_leaves_a_watch_on_a_follower_that_still_is_one(before, live_after, after, left):
    machine = _machine_whose_choice_moves(before, live_after, after)
    replicas = Moving()
    a = Agent(AgentConfig(machine=machine, servers=SERVERS, token="t", data_dir="/nonexistent"), SimDriver(),
              clock=TurnsClock())
    task = watching(a, replicas, 10)
    try:
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == [before]
        replicas.move_to(live_after)
        for _ in range(50):
            await asyncio.sleep(0)
        assert replicas.asked == ([before, after] if left else [before])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("heartbeat_s, grace", [(0.3, FOLLOWER_GRACE_S), (1.0, FOLLOWER_GRACE_S), (4.0, 2.0),
                                                (10.0, 5.0), (60.0, 30.0)])
def test_a_followers_grace_is_two_seconds_or_half_the_heartbeat_interval(heartbeat_s, grace):
    assert follower_grace(heartbeat_s) == grace
