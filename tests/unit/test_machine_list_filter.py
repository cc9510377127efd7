"""GET /v1/machines?state=...: the machine list kept to some derived states (the view built from copies of the tables, and the
query's parse at the edge). A filtered row is the same row the whole list has for that machine."""
from __future__ import annotations

import threading

import cbor2
import pytest

from raftctl.errors import ValidationError
from raftctl.node.api import machine_states
from raftctl.node.views import machine_tables, machines
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State


def register(mid: str) -> c.RegisterMachine:
    return c.RegisterMachine(machine=mid, address="127.0.0.2", fault_domain={"zone": "z1"}, labels={},
                             resources={"cpu": 1000, "memory": 1 << 30, "pids": 100}, ports=[31000, 31099],
                             runtime="sim")


def fleet() -> State:
    """m1 active, m2 down, m3 drained (nothing on it), m4 active."""
    s = State()
    for cmd in (register("m1"), register("m2"), register("m3"), register("m4"), c.MachineDown(machine="m2"),
                c.DrainMachine(machines=["m3"], drain=True)):
        r = apply(s, cmd)
        assert r.ok, r.error
    return s


@pytest.mark.parametrize("states, ids", [
    (None, ["m1", "m2", "m3", "m4"]),
    (frozenset({"down"}), ["m2"]),
    (frozenset({"active"}), ["m1", "m4"]),
    (frozenset({"down", "drained"}), ["m2", "m3"]),
    (frozenset({"maintenance"}), []),
])
def test_the_list_keeps_the_machines_in_the_states_asked(states, ids):
    s = fleet()
    every = {row["id"]: row for row in machines(s)}
    kept = machines(s, states)
    assert [row["id"] for row in kept] == ids
    assert all(row == every[row["id"]] for row in kept)      # the same rows, not a lighter form


@pytest.mark.parametrize("raw, want", [
    (None, None),
    ("down", frozenset({"down"})),
    ("down,drained", frozenset({"down", "drained"})),
    (" draining , active", frozenset({"draining", "active"})),
])
def test_the_state_query_parses(raw, want):
    assert machine_states(raw) == want


@pytest.mark.parametrize("raw, named", [("gone", "'gone'"), ("down,", "''"), ("DOWN", "'DOWN'"), ("", "''"),
                                        ("x" * 8000, "'" + "x" * 40 + "'")])   # quoted cut, not echoed whole
def test_an_unknown_state_is_refused_naming_the_field(raw, named):
    with pytest.raises(ValidationError) as bad:
        machine_states(raw)
    assert bad.value.field == "state" and named in bad.value.message and len(bad.value.message) < 200


def test_the_rows_from_the_copied_tables_are_the_rows_of_the_state():
    s = fleet()
    assert machines(machine_tables(s)) == machines(s)
    assert machines(machine_tables(s), frozenset({"down"})) == machines(s, frozenset({"down"}))


async def test_the_list_is_built_and_encoded_off_the_event_loop_outside_the_apply_lock(monkeypatch):
    # at 30,000 machines the rows took 0.3-0.7 s and their JSON 0.2-0.3 s: under the apply lock they held Raft's
    # apply, and on the event loop every heartbeat
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from raftctl.node import api, views
    from raftctl.node.http import REPLICA

    s = fleet()
    lock = threading.Lock()

    class Replica:
        raft = None

        def read(self, fn):
            with lock:
                return fn(s)

    built = []
    real = views.machines

    def spy(tables, states=None):
        built.append((threading.current_thread().name.startswith("raftctl-encode"), lock.locked()))
        return real(tables, states)

    monkeypatch.setattr(views, "machines", spy)
    app = web.Application()
    app[REPLICA] = Replica()
    app.router.add_get("/v1/machines", api.list_machines)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/v1/machines")
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert [m["id"] for m in (await resp.json())["machines"]] == ["m1", "m2", "m3", "m4"]
        down = await client.get("/v1/machines?state=down", headers={"Accept": "application/cbor"})
        assert down.headers["Content-Type"] == "application/cbor"
        assert [m["id"] for m in cbor2.loads(await down.read())["machines"]] == ["m2"]
    assert built == [(True, False), (True, False)]     # the encoding pool's thread, the lock free
