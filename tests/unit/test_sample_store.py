"""The autoscaler's in-memory sample store (raftctl/node/autoscale.py Metrics, issue 12 item 11a) keeps each
source's latest sample per series (all the autoscaler and the efficiency view read) and is bounded per series, per
job and in total, whatever agents and metric pushers send."""
from __future__ import annotations

import pytest

from raftctl.errors import ValidationError
from raftctl.node import autoscale
from raftctl.node.autoscale import Metrics


def test_a_series_keeps_each_sources_latest_sample_only() -> None:
    m = Metrics()
    for i in range(500):   # one placement reporting again and again: one sample, its latest
        m.add("web", "cpu", float(i), key="web-00001", now=1_000 + i)
    assert list(m.samples[("web", "cpu")].items()) == [("web-00001", (1_499, 499.0))] and m.total == 1
    for i in range(autoscale.SAMPLES_PER_SERIES + 5):   # more sources than a series keeps
        m.add("web", "cpu", 1.0, key=f"p{i}", now=2_000 + i)
    got = list(m.samples[("web", "cpu")])
    assert len(got) == autoscale.SAMPLES_PER_SERIES == m.total
    assert got[0] == "p5" and got[-1] == f"p{autoscale.SAMPLES_PER_SERIES + 4}"   # least recently heard first
    m.add("web", "cpu", 2.0, key="p5", now=9_000)   # heard from again: the most recent, nothing dropped
    assert list(m.samples[("web", "cpu")].items())[-1] == ("p5", (9_000, 2.0)) and m.total == autoscale.SAMPLES_PER_SERIES


def test_the_mean_is_over_each_sources_latest_sample_in_the_window() -> None:
    m = Metrics()
    m.add("web", "cpu", 0.9, key="a", now=1_000)
    m.add("web", "cpu", 0.1, key="a", now=2_000)      # replaces a's 0.9
    m.add("web", "cpu", 0.5, key="b", now=2_000)
    m.add("web", "cpu", 0.7, key="c", now=2_000 - autoscale.SAMPLE_WINDOW_MS - 1_000)   # out of the window
    assert m.value("web", "cpu", 2_000) == pytest.approx(0.3)
    assert m.value("web", "cpu", 2_000, live={"b"}) == pytest.approx(0.5)
    assert m.value("web", "cpu", 2_000 + autoscale.SAMPLE_WINDOW_MS + 1) is None


def test_a_job_has_a_bounded_number_of_metrics() -> None:
    m = Metrics()
    for i in range(autoscale.METRICS_PER_JOB):
        m.add("web", f"m{i}", 1.0, now=1)
    with pytest.raises(ValidationError) as exc:
        m.add("web", "one_more", 1.0, now=1)
    assert exc.value.field == "metric"
    m.add("web", "m0", 2.0, now=2)  # an existing series still takes samples
    m.add("api", "m0", 2.0, now=2)  # and other jobs their own metrics


def test_the_store_is_bounded_in_total_and_drops_the_stalest_series_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscale, "MAX_SAMPLES", 1000)
    m = Metrics()
    for i in range(600):
        m.add("old", "cpu", 1.0, key=f"o{i}", now=i)
    for j in range(30):  # many jobs, as many job names as a caller likes
        for i in range(20):
            m.add(f"job{j}", "cpu", 1.0, key=f"s{i}", now=1000 + i)
    assert m.total == sum(len(dq) for dq in m.samples.values()) == 1000
    old = list(m.samples[("old", "cpu")])
    assert len(old) == 600 - 200 and old[0] == "o200"   # the least recently updated series paid, oldest first
    for j in range(500):
        m.add(f"new{j}", "cpu", 1.0, key="x", now=5000)
    assert ("old", "cpu") not in m.samples and "old" not in m.per_job
    assert ("job4", "cpu") not in m.samples and len(m.samples[("job5", "cpu")]) == 20  # then the next stalest
    assert m.total == sum(len(dq) for dq in m.samples.values()) == 1000
    assert m.value("new499", "cpu", 5000) == 1.0


class CountingClock:
    def __init__(self) -> None:
        self.reads = 0

    def now_ms(self) -> int:
        self.reads += 1
        return 5_000 + self.reads


def test_a_machines_usage_is_stored_as_its_samples_one_by_one_with_one_clock_reading() -> None:
    rows = [("web", "web-1", 0.5, 1e8), ("web", "web-2", 0.25, None), ("db", "db-1", 1.0, 2e9)]
    batched, single = Metrics(CountingClock()), Metrics(CountingClock())
    batched.add_usage(rows)
    for job, placement, cpu, mem in rows:
        single.add(job, "cpu", cpu, key=placement, now=5_001)
        if mem is not None:
            single.add(job, autoscale.MEMORY_METRIC, mem, key=placement, now=5_001)
    assert batched.samples == single.samples and list(batched.samples) == list(single.samples)
    assert (batched.total, batched.per_job) == (single.total, single.per_job) == (5, {"web": 2, "db": 2})
    assert batched.clock.reads == 1
