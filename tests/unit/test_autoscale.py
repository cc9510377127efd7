"""The autoscaler's decisions (HPA rule, tolerance, cooldown, stabilisation), table-driven."""
import asyncio
import contextlib

import pytest
from msgspec.structs import replace

from raftctl.clock import FakeClock
from raftctl.node.autoscale import Autoscaler, Metrics, decide, recommend
from raftctl.statemachine.records import Autoscale, from_wire
from raftctl.statemachine import commands as c
from raftctl.statemachine.spec import validate_spec

from .fake_replica import FakeReplica

AUTO = from_wire(Autoscale, {"min": 2, "max": 10, "metric": "cpu", "target": 0.6, "cooldown_ms": 30_000,
                             "stabilization_ms": 60_000, "tolerance": 0.1})


@pytest.mark.parametrize("current,value,want", [
    (3, 0.92, 5),      # ceil(3 * 0.92 / 0.6) = 5
    (3, 0.6, 3),       # on target
    (3, 0.64, 3),      # inside the tolerance band
    (4, 0.15, 2),      # ceil(4 * 0.25) = 1, clamped to min 2
    (8, 3.0, 10),      # clamped to max
    (3, None, 3),      # no samples: hold
])
def test_recommend(current, value, want):
    assert recommend(AUTO, current, value)[0] == want


@pytest.mark.parametrize("target", [float("nan"), float("inf"), 0, -0.5, "0.6"])
def test_a_target_stored_before_validation_holds_instead_of_raising(target):
    """Specs stored before targets were bounded can hold NaN, 0 or a string: the autoscaler holds the
    current count and says why, rather than raising on every tick."""
    desired, reason = recommend(replace(AUTO, target=target), 3, 0.9)
    assert desired == 3 and "not a positive finite number" in reason


def test_reason_reads_like_an_event():
    assert recommend(AUTO, 3, 0.92)[1] == "cpu 0.92 > target 0.6"


CASES = [
    ("scale up at once", 3, 0.92, [], 100_000, None, 5),
    ("scale up waits for the cooldown", 3, 0.92, [], 100_000, 90_000, None),
    ("scale up after the cooldown", 3, 0.92, [], 100_000, 60_000, 5),
    ("scale down waits for the stabilisation window", 5, 0.2, [(90_000, 5)], 100_000, 0, None),
    ("scale down once the window is calm", 5, 0.2, [(30_000, 5), (95_000, 2)], 100_000, 0, 2),
    ("back inside the range", 1, None, [], 100_000, None, 2),
]


@pytest.mark.parametrize("name,current,value,history,now,last,want", CASES, ids=[c[0] for c in CASES])
def test_decide(name, current, value, history, now, last, want):
    assert decide(AUTO, current, value, history, now, last).desired == want


def test_metrics_average_latest_per_source_within_window():
    m = Metrics()
    m.add("web", "cpu", 0.2, key="a", now=1_000)
    m.add("web", "cpu", 0.8, key="a", now=5_000)
    m.add("web", "cpu", 0.4, key="b", now=5_000)
    m.add("web", "cpu", 9.9, key="gone", now=5_000)
    assert m.value("web", "cpu", 6_000, live={"a", "b"}) == pytest.approx(0.6)
    assert m.value("web", "cpu", 60_000) is None


# -- the autoscaler on a fake clock --

RPS = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 2,
       "autoscale": {"min": 1, "max": 10, "metric": "rps", "target": 10, "cooldown": "30s", "stabilization": "60s"}}


def test_a_sample_without_a_time_is_stamped_by_the_injected_clock():
    clock = FakeClock(wall_ms=50_000)
    m = Metrics(clock)
    m.add("web", "rps", 7.0)
    m.add("web", "rps", 3.0, key="b", now=0)  # a given time is kept, even 0
    assert [t for t, _ in m.samples[("web", "rps")].values()] == [50_000, 0]
    assert m.value("web", "rps", clock.now_ms()) == 7.0
    clock.advance(15.0)
    assert m.value("web", "rps", clock.now_ms()) == 7.0
    clock.advance(0.001)
    assert m.value("web", "rps", clock.now_ms()) is None  # out of the 15 s window


async def test_a_scale_up_waits_for_the_cooldown_on_the_injected_clock():
    clock = FakeClock()
    r = FakeReplica(clock)
    assert (await r.propose(c.PutJob(spec=validate_spec(RPS)))).ok
    scaler = Autoscaler(r, epoch=1, clock=clock)
    r.metrics.add("web", "rps", 20.0)
    await scaler.tick()
    assert [(x.replicas, x.reason) for x in r.of(c.ScaleJob)] == [(4, "rps 20.00 > target 10: 2 -> 4")]
    assert r.state.jobs["web"].replicas == 4
    for step in (1.0, 28.0, 0.999):       # 29.999 s after the change: still cooling down
        clock.advance(step)
        r.metrics.add("web", "rps", 30.0)
        await scaler.tick()
        assert len(r.of(c.ScaleJob)) == 1 and scaler.status()["last_reason"]["web"].endswith("(cooling down)")
    clock.advance(0.001)
    await scaler.tick()
    assert [x.replicas for x in r.of(c.ScaleJob)] == [4, 10]   # ceil(4 * 30 / 10) = 12, clamped to max 10


async def test_the_autoscaler_loop_passes_once_a_second_of_its_clock():
    clock = FakeClock()
    r = FakeReplica(clock)
    assert (await r.propose(c.PutJob(spec=validate_spec(RPS)))).ok
    task = asyncio.create_task(Autoscaler(r, epoch=1, clock=clock).run())
    try:
        for _ in range(50):
            await asyncio.sleep(0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(clock.sleeps) >= 10 and set(clock.sleeps) == {1.0}
