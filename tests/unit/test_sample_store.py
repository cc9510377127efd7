"""The autoscaler's in-memory sample store (raftctl/node/autoscale.py Metrics, issue 12 item 11a) is bounded per
series, per job and in total, whatever agents and metric pushers send."""
from __future__ import annotations

import pytest

from raftctl.errors import ValidationError
from raftctl.node import autoscale
from raftctl.node.autoscale import Metrics


def test_a_series_keeps_its_latest_samples_only() -> None:
    m = Metrics()
    for i in range(autoscale.SAMPLES_PER_SERIES + 500):
        m.add("web", "cpu", float(i), key="web-00001", now=1_000 + i)
    dq = m.samples[("web", "cpu")]
    assert len(dq) == autoscale.SAMPLES_PER_SERIES == m.total
    assert dq[-1][2] == autoscale.SAMPLES_PER_SERIES + 499.0


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
        m.add("old", "cpu", 1.0, now=i)
    for j in range(30):  # many jobs, as many job names as a caller likes
        for i in range(20):
            m.add(f"job{j}", "cpu", 1.0, now=1000 + i)
    assert m.total == sum(len(dq) for dq in m.samples.values()) == 1000
    assert len(m.samples[("old", "cpu")]) == 600 - 200  # the least recently updated series paid for the new ones
    for j in range(500):
        m.add(f"new{j}", "cpu", 1.0, now=5000)
    assert ("old", "cpu") not in m.samples and "old" not in m.per_job
    assert ("job4", "cpu") not in m.samples and len(m.samples[("job5", "cpu")]) == 20  # then the next stalest
    assert m.total == sum(len(dq) for dq in m.samples.values()) == 1000
    assert m.value("new499", "cpu", 5000) == 1.0
