"""The replica's event-loop lag (looplag.py): each wake-up counted in the first bucket whose bound it does not pass;
a loop held for 0.4 s shows a lag of at least 0.3 s (0.4 s less the 0.1 s the task was asleep anyway)."""
from __future__ import annotations

import asyncio
import time

import pytest

from raftctl.node.looplag import BUCKETS, HELD_S, LoopLag


@pytest.mark.parametrize("late, bucket", [
    (0.0, "0.005"), (-0.001, "0.005"), (0.005, "0.005"), (0.0051, "0.01"), (0.3, "0.5"), (10.0, "10.0"),
    (11.0, "+Inf"),
])
def test_a_wake_up_counts_in_the_first_bucket_it_does_not_pass(late, bucket):
    lag = LoopLag()
    lag.observe(late)
    buckets = dict(lag.cumulative())
    bounds = [*map(str, BUCKETS), "+Inf"]
    first = bounds.index(bucket)
    assert [buckets[b] for b in bounds] == [0] * first + [1] * (len(bounds) - first)
    assert lag.worst == lag.sum == max(0.0, late)


async def test_a_held_loop_shows_as_lag():
    lag = LoopLag()
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.25)
        time.sleep(0.4)                  # the loop held, as a long computation on it holds it
        await asyncio.sleep(0.25)
    finally:
        task.cancel()
    assert lag.worst >= 0.3 and dict(lag.cumulative())["+Inf"] >= 3
    assert dict(lag.cumulative())["0.25"] < dict(lag.cumulative())["+Inf"]


async def test_a_loop_held_past_the_bound_is_logged_once_with_the_stack_that_holds_it(caplog):
    lag = LoopLag()
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.25)
        with caplog.at_level("WARNING", logger="raftctl.looplag"):
            hold_the_loop(HELD_S + 1.5)
            await asyncio.sleep(0.25)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    held = [r.getMessage() for r in caplog.records if "event loop held" in r.getMessage()]
    assert len(held) == 1 and lag.held_reports == 1
    assert "--- event loop" in held[0] and "hold_the_loop" in held[0]


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)
