"""The autoscaler's decisions (HPA rule, tolerance, cooldown, stabilisation), table-driven."""
import pytest

from raftctl.node.autoscale import Metrics, decide, recommend

AUTO = {"min": 2, "max": 10, "metric": "cpu", "target": 0.6, "cooldown_ms": 30_000, "stabilization_ms": 60_000,
        "tolerance": 0.1}


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
    desired, reason = recommend({**AUTO, "target": target}, 3, 0.9)
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
