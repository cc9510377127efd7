"""The failover monitor's pure decision: who is declared down, and the mass-loss guard."""
import pytest

from raftctl.node.failover import FailoverConfig, judge

CFG = FailoverConfig(ttl_s=3.0, max_silent_fraction=0.5, mass_interval_s=10.0)
UP = ["a", "b", "c", "d"]

CASES = [
    ("everyone heard recently", {m: 99.0 for m in UP}, None, [], False),
    ("one silent past the TTL", {"a": 90.0, "b": 99.0, "c": 99.0, "d": 99.0}, None, ["a"], False),
    ("exactly at the TTL is not yet down", {"a": 97.0, "b": 99.0, "c": 99.0, "d": 99.0}, None, [], False),
    ("half silent: not a mass loss", {"a": 90.0, "b": 90.0, "c": 99.0, "d": 99.0}, None, ["a", "b"], False),
    ("most silent: guard, oldest first", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, None, ["b"], True),
    ("guard holds the next one back", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, 95.0, [], True),
    ("guard lets one go after the interval", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, 89.0, ["b"], True),
]


@pytest.mark.parametrize("name,seen,last_mass,down,guard", CASES, ids=[c[0] for c in CASES])
def test_judge(name, seen, last_mass, down, guard):
    v = judge(UP, seen, now=100.0, cfg=CFG, last_mass_down=last_mass)
    assert (v.down, v.guard_active) == (down, guard)


def test_new_machine_without_heartbeat_gets_a_fresh_ttl():
    assert judge(["a"], {}, now=100.0, cfg=CFG, last_mass_down=None).down == []
