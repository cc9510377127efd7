"""raftctl.clock: the one Clock protocol of node and agent, the real clock and the fake one tests drive."""
from __future__ import annotations

import asyncio
import time

import pytest

from raftctl.clock import SYSTEM, Clock, FakeClock, SystemClock


def test_the_system_clock_reads_wall_milliseconds_and_monotonic_seconds():
    before = int(time.time() * 1000)
    wall = SYSTEM.now_ms()
    after = int(time.time() * 1000)
    assert isinstance(wall, int) and before <= wall <= after
    a, b = SYSTEM.monotonic(), SYSTEM.monotonic()
    assert b >= a
    assert isinstance(SYSTEM, SystemClock)


async def test_the_system_clock_sleeps_for_real():
    t0 = time.monotonic()
    await SYSTEM.sleep(0.02)
    assert time.monotonic() - t0 >= 0.015


def test_a_fake_clock_moves_only_when_advanced_and_both_readings_together():
    clock = FakeClock(wall_ms=5_000, monotonic=10.0)
    assert (clock.now_ms(), clock.monotonic()) == (5_000, 10.0)
    assert (clock.now_ms(), clock.monotonic()) == (5_000, 10.0)  # reading does not move it
    clock.advance(1.5)
    assert (clock.now_ms(), clock.monotonic()) == (6_500, 11.5)
    clock.advance(0.0004)
    assert clock.now_ms() == 6_500 and clock.monotonic() == pytest.approx(11.5004)
    clock.advance(0.0006)
    assert clock.now_ms() == 6_501  # sub-millisecond steps add up on the wall reading too


def test_a_fake_clock_never_goes_back():
    clock = FakeClock()
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        FakeClock(wall_ms=-1)


async def test_sleeping_on_a_fake_clock_moves_it_at_once_and_lets_other_tasks_run():
    clock = FakeClock(wall_ms=0, monotonic=0.0)
    ran = []

    async def other() -> None:
        ran.append(clock.monotonic())
    task = asyncio.create_task(other())
    t0 = time.monotonic()
    await clock.sleep(3600)
    assert time.monotonic() - t0 < 1.0  # an hour passed on the fake clock, not on the real one
    assert (clock.now_ms(), clock.monotonic()) == (3_600_000, 3600.0)
    assert task.done() and ran == [3600.0]  # the sleep yielded to the event loop (time already moved)
    await clock.sleep(-1)                # a negative sleep is a zero one, as asyncio.sleep's
    assert clock.sleeps == [3600, -1] and clock.monotonic() == 3600.0


def test_both_clocks_satisfy_the_protocol():
    def use(c: Clock) -> tuple[int, float]:
        return c.now_ms(), c.monotonic()
    assert use(FakeClock(wall_ms=1, monotonic=2.0)) == (1, 2.0)
    assert len(use(SystemClock())) == 2
