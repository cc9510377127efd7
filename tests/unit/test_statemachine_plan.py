"""A Plan's items are judged against the machine as the items before them left it (issue 15: apply keeps each
machine's usage for the whole plan instead of recounting the machine's placements for every item).

Specification: applying a plan's items in one Plan places, and rejects with the same reasons, exactly what
applying them one Plan each does; a malformed item rejects the whole plan naming its field.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State

SPEC = {"name": "web", "image": "web:1", "command": ["true"], "replicas": 40,
        "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}, "ports": [{"name": "http"}], "service": "web"}


def machine(mid: str) -> c.RegisterMachine:
    return c.RegisterMachine(machine=mid, address="10.0.0.1", fault_domain={"zone": "z"}, labels={},
                             resources={"cpu": 1000, "memory": 1 << 30, "pids": 1000}, ports=[31000, 31003],
                             runtime="sim")


def cluster() -> State:
    s = State()
    for cmd in (c.ClaimEpoch(term=1), machine("m1"), machine("m2"), c.PutJob(spec=SPEC),
                c.PutJob(spec={**SPEC, "name": "db", "service": "db"})):
        assert apply(s, cmd).ok
    return s


def item(replica: int, mid: str = "m1", cpu: int = 250, port: int = 31000, job: str = "web") -> dict:
    return {"job": job, "version": 1, "replica": replica, "machine": mid,
            "resources": {"cpu": cpu, "memory": 1 << 20, "pids": 1}, "ports": {"http": port}}


def outcome(s: State, value: dict, n: int) -> list:
    """What each of a plan's ``n`` items became, in item order: (job, replica, machine, resources, ports) placed,
    or the rejection reason."""
    reasons = {r["item"]: r["reason"] for r in value["rejected"]}
    placed = iter(value["placed"])
    out: list = []
    for i in range(n):
        if i in reasons:
            out.append(reasons[i])
        else:
            p = s.placements[next(placed)]
            out.append((p.job, p.replica, p.machine, p.resources, p.ports))
    return out


def test_items_of_one_plan_see_the_resources_and_ports_earlier_items_took():
    s = cluster()
    r = apply(s, c.Plan(epoch=1, place=[item(0, cpu=600), item(1, cpu=600, port=31001), item(2, cpu=100, port=31000),
                                        item(3, cpu=400, port=31002), item(4, mid="m2", cpu=1000)]))
    assert r.ok, r.error
    assert len(r.value["placed"]) == 3
    assert [x["reason"] for x in r.value["rejected"]] == ["insufficient cpu on m1", "port 31000 already in use on m1"]
    assert sorted(s.placements[p].machine for p in r.value["placed"]) == ["m1", "m1", "m2"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["web", "db"]), st.integers(0, 5), st.sampled_from(["m1", "m2"]),
                          st.sampled_from([100, 300, 700]), st.integers(31000, 31004)), max_size=14))
def test_one_plan_places_what_one_plan_per_item_places(items):
    plan = [item(rep, mid, cpu, port, job) for job, rep, mid, cpu, port in items]
    together = cluster()
    r = apply(together, c.Plan(epoch=1, place=plan))
    assert r.ok, r.error
    apart = cluster()
    singles = [apply(apart, c.Plan(epoch=1, place=[x])) for x in plan]
    assert all(x.ok for x in singles)
    assert outcome(together, r.value, len(plan)) == [outcome(apart, x.value, 1)[0] for x in singles]


def test_a_malformed_item_rejects_the_plan_naming_its_field():
    cases = [
        ([item(0), "x"], "place.1: Expected `object`, got `str`", "place.1"),
        ([{**item(0), "replica": -1}], "place.0.replica: Expected `int` >= 0", "place.0.replica"),
        ([{k: v for k, v in item(0).items() if k != "job"}], "place.0.job: is required", "place.0.job"),
        ([item(0), {**item(1), "resources": {"cpu": True}}], "place.1.resources[...]: Expected `int`, got `bool`",
         "place.1.resources[...]"),
        ([{**item(0), "resources": [1]}], "place.0.resources: Expected `object`, got `array`", "place.0.resources"),
        ([{**item(0), "ports": {"http": 70000}}], "place.0.ports[...]: Expected `int` <= 65535", "place.0.ports[...]"),
        ([{**item(0), "ports": {1: 31000}}], "place.0.ports: Expected `str`, got `int` (a key)", "place.0.ports"),
        ([{**item(0), "colour": "red"}], "place.0.colour: unknown field", "place.0.colour"),
    ]
    for place, message, field in cases:
        s = cluster()
        before = s.snapshot()
        r = apply(s, c.Plan(epoch=1, place=place))
        assert not r.ok and r.error is not None
        assert (r.error.code, r.error.message, r.error.field) == ("invalid", message, field)
        assert s.snapshot() == before
