"""The stats pass (agent/stats.py) on a fake clock and a scripted driver: CPU utilisation of the request from
the counter's growth over clock time, log rotation, skipped containers, and the sweep of gone ones."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftctl.agent.stats import STATS_MAX_EVERY_S, StatsPass, rotations_per_sample, stats_period
from raftctl.agent.supervisor import Supervised
from tests.agent.conftest import CountedClock, job_spec


class Driver:
    def __init__(self) -> None:
        self.cpu_ns: dict[str, int] = {}
        self.rotated: list[str] = []
        self.broken: set[str] = set()

    def stats(self, id: str) -> dict[str, int]:
        if id in self.broken:
            raise OSError("cgroup gone")
        return {"cpu_usage_ns": self.cpu_ns[id], "memory_bytes": 1000 + len(id), "memory_limit": 0, "pids": 1,
                "throttled_ns": 0}

    def rotate_logs(self, id: str) -> None:
        self.rotated.append(id)


def sup(job: str, cpu: int = 500, state: str = "running", spec: bool = True) -> Supervised:
    p: dict[str, Any] = {"id": job + "-1", "job": job}
    if spec:
        p["spec"] = job_spec(resources={"cpu": cpu, "memory": 1 << 20})
    return Supervised(placement=p, state=state)


async def test_utilisation_is_cpu_used_over_clock_time_over_the_request():
    d, clock = Driver(), CountedClock()
    containers = {"a-1": sup("a", cpu=500), "b-1": sup("b", cpu=2000)}
    d.cpu_ns = {"a-1": 10**9, "b-1": 0}
    s = StatsPass(d, containers, clock)  # type: ignore[arg-type]
    assert await s.sample() == []                      # first sample: the base only
    assert d.rotated == ["a-1", "b-1"] and containers["a-1"].stats["cpu_usage_ns"] == 10**9
    clock.advance(4.0)
    d.cpu_ns = {"a-1": 3 * 10**9, "b-1": 2 * 10**9}    # a: 2 s of CPU in 4 s = 0.5 core of its 0.5; b: 0.5 of 2
    assert await s.sample() == [{"placement": "a-1", "job": "a", "cpu": 1.0, "memory": 1003},
                                {"placement": "b-1", "job": "b", "cpu": 0.25, "memory": 1003}]


async def test_a_counter_going_back_is_zero_and_no_clock_progress_is_no_figure():
    d, clock = Driver(), CountedClock()
    containers = {"a-1": sup("a")}
    d.cpu_ns = {"a-1": 5 * 10**9}
    s = StatsPass(d, containers, clock)  # type: ignore[arg-type]
    await s.sample()
    assert await s.sample() == []          # same clock time: no rate
    clock.advance(1)
    d.cpu_ns["a-1"] = 0                    # counter reset (a restart in the same cgroup)
    assert [o["cpu"] for o in await s.sample()] == [0.0]


async def test_not_running_unknown_and_failing_containers_are_skipped_and_gone_ones_forgotten():
    d, clock = Driver(), CountedClock()
    containers = {"a-1": sup("a"), "b-1": sup("b", state="exited"), "c-1": sup("c", spec=False),
                  "e-1": sup("e")}
    d.cpu_ns = {"a-1": 0, "b-1": 0, "c-1": 0, "e-1": 0}
    d.broken = {"e-1"}
    s = StatsPass(d, containers, clock)  # type: ignore[arg-type]
    await s.sample()
    assert set(s.last) == {"a-1"} and d.rotated == ["a-1"] and containers["e-1"].stats is None
    del containers["a-1"]
    await s.sample()
    assert s.last == {}


async def test_the_loop_sends_each_period_only_when_there_are_figures_and_survives_a_failed_send():
    d, clock = Driver(), CountedClock(stop_after=4)
    containers = {"a-1": sup("a")}
    d.cpu_ns = {"a-1": 0}
    sent: list[list[dict[str, Any]]] = []

    async def send(out: list[dict[str, Any]]) -> None:
        sent.append(out)
        d.cpu_ns["a-1"] += 10**9
        if len(sent) == 2:
            raise OSError("control plane unreachable")

    s = StatsPass(d, containers, clock, every_s=2.0)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await s.run(send)
    assert clock.sleeps == [2.0] * 4
    assert len(sent) == 3 and [o[0]["cpu"] for o in sent] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("interval_s, period_s, passes", [
    (1.0, 2.0, 1),      # the default heartbeat: every 2 heartbeats
    (0.5, 2.0, 1),      # never more often than the pass's own 2 s
    (5.0, 10.0, 1),     # 2 heartbeats would be 10 s: the cap
    (8.0, 10.0, 1),     # capped at 10 s, still more than one heartbeat
    (20.0, 20.0, 2),    # 10,000 machines: once per heartbeat, logs rotated halfway
    (25.0, 25.0, 3),    # passes of 8.3 s: the logs never wait more than 10 s
    (60.0, 60.0, 6),    # 30,000 machines: one sample a minute, six rotations
])
def test_samples_follow_the_heartbeats_and_logs_are_rotated_every_10_s(interval_s, period_s, passes):
    assert stats_period(interval_s) == period_s
    assert rotations_per_sample(period_s) == passes
    assert period_s / passes <= STATS_MAX_EVERY_S


class NoLogs(Driver):
    rotates_logs = False


@pytest.mark.parametrize("driver, rotations", [(Driver, 11), (NoLogs, 0)])
async def test_at_a_60_s_heartbeat_one_pass_in_six_samples_and_the_others_only_rotate(driver, rotations):
    d, clock = driver(), CountedClock(stop_after=13)
    containers = {"a-1": sup("a")}
    d.cpu_ns = {"a-1": 0}
    sent: list[list[dict[str, Any]]] = []
    samples: list[float] = []
    real_stats = d.stats

    def stats(id: str) -> dict[str, int]:
        samples.append(clock.monotonic())
        d.cpu_ns["a-1"] += 3 * 10**9            # 3 s of CPU between two samples
        return real_stats(id)

    d.stats = stats  # type: ignore[method-assign]

    async def send(out: list[dict[str, Any]]) -> None:
        sent.append(out)

    s = StatsPass(d, containers, clock)  # type: ignore[arg-type]
    s.follow_heartbeat(60.0)
    t0 = clock.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await s.run(send)
    assert clock.sleeps == [10.0] * 13
    assert [t - t0 for t in samples] == [60.0, 120.0]             # not 13 samples, of which 11 would never be sent
    assert len(sent) == 1 and sent[0][0]["cpu"] == pytest.approx(3.0 / 60 / 0.5)   # 3 s of CPU over the minute
    # the logs: with each of the 2 samples, and alone in the 11 other passes (a driver that keeps none: never)
    assert d.rotated.count("a-1") == 2 + rotations
