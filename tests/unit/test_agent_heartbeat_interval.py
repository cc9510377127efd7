"""The agent follows the heartbeat interval the leader answers (issue 15), bounded, and ignores bad values.

``followed_interval`` table-driven; the real heartbeat loop of an Agent against a scripted control plane on
loopback (real ControlClient, real HTTP), on a fake clock that ends the loop after the script."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from typing import Any

import pytest
from aiohttp import web

from raftctl.agent.config import AgentConfig
from raftctl.agent.control import ControlClient
from raftctl.agent.loop import HEARTBEAT_MAX_S, Agent, first_wait, followed_interval
from raftctl.agent.runtime.sim import SimDriver
from raftctl.agent.stats import STATS_EVERY_S, STATS_MAX_EVERY_S
from tests.agent.conftest import CountedClock

FOLLOWED = [
    # name, told, the agent's own interval, followed (None: ignored, kept as it was)
    ("a longer interval is followed", 5, 1.0, 5.0),
    ("a float", 2.5, 1.0, 2.5),
    ("never below the agent's own", 0.1, 1.0, 1.0),
    ("never above 60 s", 1e9, 1.0, HEARTBEAT_MAX_S),
    ("an agent whose own is above 60 s keeps its own", 5, 90.0, 90.0),
    ("zero: ignored", 0, 1.0, None),
    ("negative: ignored", -3, 1.0, None),
    ("a string: ignored", "5", 1.0, None),
    ("missing: ignored", None, 1.0, None),
    ("a boolean: ignored", True, 1.0, None),
    ("NaN: ignored", math.nan, 1.0, None),
    ("infinity: ignored", math.inf, 1.0, None),
    ("a list: ignored", [5], 1.0, None),
]


@pytest.mark.parametrize("name,told,own,want", FOLLOWED, ids=[x[0] for x in FOLLOWED])
def test_the_interval_followed(name, told, own, want):
    assert followed_interval(told, own) == want


FIRST_WAIT = [
    # name, previous interval, new interval, the range the first wait at the new one falls in
    ("it grew: between the two", 19.9, 20.0, (19.9, 20.0)),
    ("a big step up: anywhere past the old one", 1.0, 20.0, (1.0, 20.0)),
    ("it shrank: anywhere in the new one", 20.0, 15.0, (0.0, 15.0)),
]


@pytest.mark.parametrize("name,previous,interval,bounds", FIRST_WAIT, ids=[x[0] for x in FIRST_WAIT])
def test_the_first_wait_at_a_new_interval(name, previous, interval, bounds):
    waits = [first_wait(previous, interval, random.Random(seed)) for seed in range(200)]
    assert all(bounds[0] <= w <= bounds[1] for w in waits)
    assert max(waits) - min(waits) > 0.5 * (bounds[1] - bounds[0])     # spread over the range, not one point


def fleet_heartbeats(wait: Any) -> tuple[int, float]:
    """500 machines while the interval told grows 0.1 s each second from 10 s to 20 s (the budget's steps while
    the fleet grows), each agent following the interval its answer tells with ``wait(previous, new, rng)`` before
    its first heartbeat at a changed one: the heartbeats sent in 100 s, and what the intervals allow (the sum of
    N / interval over the seconds)."""
    rng = random.Random(3)
    told = lambda t: min(20.0, 10.0 + 0.1 * int(t))        # noqa: E731
    sent = 0
    for _ in range(500):
        t, interval = rng.uniform(0, 10.0), 10.0
        while t < 100:
            sent += 1
            new = told(t)
            t += wait(interval, new, rng) if new != interval else new
            interval = new
    return sent, sum(500 / told(t) for t in range(100))


def test_a_fleet_whose_interval_grows_in_small_steps_beats_within_its_budget():
    sent, allowed = fleet_heartbeats(first_wait)
    # each answer tells an interval up to 2 s longer than the last (it grew while the agent waited): the wait
    # between the two keeps the fleet within 10 % of the budget
    assert sent <= 1.1 * allowed
    # a wait anywhere in the new interval (until session 22) sent about twice as many (1.95x)
    before, _ = fleet_heartbeats(lambda previous, new, rng: rng.uniform(0, new))
    assert before >= 1.5 * allowed


# the leader's answers, in order: every one says the machine is up
SCRIPT: list[Any] = [5, "5", None, -1, {"s": 5}, 1e9, 0.1, 1]


async def test_the_heartbeat_loop_follows_the_answered_interval_and_ignores_bad_ones(tmp_path, caplog):
    asked: list[str] = []

    async def heartbeat(request: web.Request) -> web.Response:
        asked.append((await request.json())["machine"])
        told = SCRIPT[min(len(asked), len(SCRIPT)) - 1]   # the last one again for the heartbeat after it
        body = {"machine": "m1", "status": "up", "ttl_s": 3.0, "epoch": 2}
        if told is not None:
            body["interval_s"] = told
        return web.Response(body=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/agent/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    clock = CountedClock(stop_after=len(SCRIPT) + 1)   # the first sleep, one after each answer, one more
    agent = Agent(AgentConfig(machine="m1", servers=[url], token="t", data_dir=str(tmp_path), heartbeat_s=1.0),
                  SimDriver(), rng=random.Random(7), clock=clock)
    periods = []
    real_follow = agent.stats.follow_heartbeat

    def follow(interval_s: float) -> None:
        real_follow(interval_s)
        periods.append(agent.stats.period_s)
    agent.stats.follow_heartbeat = follow  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="raftctl.agent")
    try:
        async with ControlClient([url], "t") as control:
            agent.control = control
            with pytest.raises(asyncio.CancelledError):
                await agent._heartbeat_loop()
    finally:
        await runner.cleanup()
    assert asked == ["m1"] * (len(SCRIPT) + 1)
    s = clock.sleeps
    # the first heartbeat comes after a random part of the agent's own interval (registering counted as one)
    assert 0 <= s[0] < 1.0
    # 5: followed; the next one after a random part of it (told together, agents do not beat in phase), never
    # sooner than the interval it grew from
    assert 1.0 <= s[1] < 5.0
    # "5", missing, -1 and an object: ignored, the agent keeps beating every 5 s
    assert s[2:6] == [5.0, 5.0, 5.0, 5.0]
    # 1e9: bounded to 60 s; 0.1: bounded to the agent's own 1 s; 1: unchanged
    assert 5.0 <= s[6] < HEARTBEAT_MAX_S and 0 <= s[7] < 1.0 and s[8] == 1.0
    assert agent.heartbeat_s == 1.0
    # the stats pass stretches with the heartbeats: every 2 heartbeats, at most every 10 s (the autoscaler's
    # 15 s sample window) unless heartbeats go less often (60 s: its samples ride on them), never more often
    # than its own 2 s
    assert periods == [STATS_MAX_EVERY_S, 60.0, STATS_EVERY_S]
    ignored = [r.getMessage() for r in caplog.records if "not a positive number" in r.getMessage()]
    assert len(ignored) == 4 and "'5'" in ignored[0] and "keeping 5s" in ignored[0]


@pytest.mark.parametrize("heartbeat_s, wait_s", [(0.3, 10.0), (1.0, 10.0), (5.0, 50.0), (12.0, 120.0), (60.0, 120.0)])
def test_a_parked_watch_waits_ten_heartbeats_between_10_s_and_120_s(heartbeat_s: float, wait_s: float) -> None:
    from raftctl.agent.loop import watch_wait
    assert watch_wait(heartbeat_s) == wait_s
