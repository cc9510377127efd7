"""A replica process's garbage collector: its thresholds (with a benchmark override) and what it costs."""
from __future__ import annotations

import gc

import pytest

from raftctl.gcstats import GC_THRESHOLDS, GcStats, thresholds_from_env


@pytest.mark.parametrize("env,want", [
    ({}, GC_THRESHOLDS),
    ({"RAFTCTL_GC_THRESHOLDS": ""}, GC_THRESHOLDS),
    ({"RAFTCTL_GC_THRESHOLDS": "700,10,10"}, (700, 10, 10)),          # CPython's defaults, for a comparison
    ({"RAFTCTL_GC_THRESHOLDS": " 100000, 50 ,5"}, (100000, 50, 5)),
])
def test_thresholds(env: dict[str, str], want: tuple[int, int, int]) -> None:
    assert thresholds_from_env(env) == want


@pytest.mark.parametrize("raw", ["700,10", "700,10,10,1", "a,b,c", "0,10,10", "-1,10,10", "700,,10"])
def test_bad_thresholds_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="RAFTCTL_GC_THRESHOLDS"):
        thresholds_from_env({"RAFTCTL_GC_THRESHOLDS": raw})


def test_stats_count_collections_per_generation_and_their_time() -> None:
    stats = GcStats().install()
    try:
        before = list(stats.collections)

        class Cycle:
            pass
        for _ in range(50):
            a, b = Cycle(), Cycle()
            a.b, b.a = b, a          # type: ignore[attr-defined]
        del a, b
        gc.collect(0)
        gc.collect(2)
        assert stats.collections[0] >= before[0] + 1 and stats.collections[2] >= before[2] + 1
        assert stats.seconds[2] > 0 and stats.collected[0] + stats.collected[2] >= 2
        assert 0 < stats.longest[2] <= stats.seconds[2]
        assert 0 < stats.cpu_seconds[2] <= stats.seconds[2] + 0.01   # CPU time of the collecting thread
    finally:
        stats.remove()
    n = stats.collections[2]
    gc.collect(2)
    assert stats.collections[2] == n       # removed: no longer counts
