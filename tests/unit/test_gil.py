"""The GIL switch interval raftctl's replica and agent processes run with (raftctl/gil.py), with its benchmark
override; that a served replica runs with it is tests/integration/test_metrics.py's."""
from __future__ import annotations

import sys

import pytest

from raftctl.gil import SWITCH_INTERVAL_S, switch_interval_from_env, tune_switch_interval


@pytest.mark.parametrize("env,want", [
    ({}, SWITCH_INTERVAL_S),
    ({"RAFTCTL_SWITCH_INTERVAL_MS": ""}, SWITCH_INTERVAL_S),
    ({"RAFTCTL_SWITCH_INTERVAL_MS": "5"}, 0.005),          # CPython's default, for a comparison
    ({"RAFTCTL_SWITCH_INTERVAL_MS": " 0.5 "}, 0.0005),
    ({"RAFTCTL_SWITCH_INTERVAL_MS": "100"}, 0.1),
])
def test_switch_interval(env: dict[str, str], want: float) -> None:
    assert switch_interval_from_env(env) == pytest.approx(want)


@pytest.mark.parametrize("raw", ["fast", "0", "0.01", "-1", "101", "nan", "1ms"])
def test_a_bad_interval_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="RAFTCTL_SWITCH_INTERVAL_MS"):
        switch_interval_from_env({"RAFTCTL_SWITCH_INTERVAL_MS": raw})


def test_tuning_sets_the_process_interval() -> None:
    before = sys.getswitchinterval()
    try:
        tune_switch_interval(0.002)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)
