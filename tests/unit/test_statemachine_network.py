"""Container networking in the replicated state (issue 16): subnets per machine, addresses per bridge placement.

Specification: apply gives each registering machine the lowest free /24 of its pool (10.88.0.0/16 unless the
registration names one), keeps it across re-registrations, never hands out one that overlaps another machine's,
and says plainly when the pool is exhausted; a machine from a snapshot written before subnets gets one at its
next registration. A bridge placement's address is the lowest free host of its machine's subnet (.1 is the
bridge) among that machine's placements holding resources; a host placement keeps the machine address; discovery
publishes a bridge endpoint at the container's address and port. Every replica allocates alike.
"""
from __future__ import annotations

import cbor2
import pytest

from raftctl.node.agent_api import _assignments
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from msgspec import UNSET

from raftctl.statemachine.records import to_wire
from raftctl.statemachine.spec import SpecError, validate_spec
from raftctl.statemachine.state import State
from raftctl.statemachine.subnets import allocate_address, allocate_subnet, gateway, parse_pool, PoolError

RAW = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 10, "network": "bridge",
       "resources": {"cpu": "10m", "memory": "8Mi"}, "ports": [{"name": "http"}]}


def register(mid: str, address: str = "", pool: str = "", runtime: str = "runc") -> c.RegisterMachine:
    return c.RegisterMachine(machine=mid, address=address or f"192.0.2.{len(mid)}", fault_domain={}, labels={},
                             resources={"cpu": 1000, "memory": 1 << 30, "pids": 1000}, ports=[31000, 31999],
                             runtime=runtime, pool=pool)


def state_with(*cmds: c.Command) -> State:
    s = State()
    for cmd in (c.ClaimEpoch(term=1),) + cmds:
        r = apply(s, cmd)
        assert r.ok, r.error
    return s


def item(replica: int, mid: str = "m1", port: int = 31000, job: str = "web") -> dict:
    return {"job": job, "version": 1, "replica": replica, "machine": mid,
            "resources": {"cpu": 10, "memory": 8 << 20, "pids": 1}, "ports": {"http": port}}


# -- subnets -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,expected", [
    # (machine, pool) registered in order -> each machine's subnet afterwards
    ([("m1", ""), ("m2", ""), ("m3", "")], {"m1": "10.88.0.0/24", "m2": "10.88.1.0/24", "m3": "10.88.2.0/24"}),
    ([("m1", ""), ("m2", ""), ("m1", ""), ("m1", "")], {"m1": "10.88.0.0/24", "m2": "10.88.1.0/24"}),
    ([("m1", "10.9.0.0/16"), ("m2", "")], {"m1": "10.9.0.0/24", "m2": "10.88.0.0/24"}),
    # pools that overlap never give the same /24 twice
    ([("m1", "10.88.0.0/16"), ("m2", "10.88.0.0/23"), ("m3", "10.88.0.0/23")],
     {"m1": "10.88.0.0/24", "m2": "10.88.1.0/24", "m3": None}),
    ([("m1", "10.7.0.0/24"), ("m2", "10.7.0.0/24"), ("m2", "10.7.0.0/24")], {"m1": "10.7.0.0/24", "m2": None}),
])
def test_each_machine_gets_the_lowest_free_subnet_and_keeps_it(steps, expected):
    s = state_with(*(register(m, pool=p) for m, p in steps))
    assert {m: rec.subnet for m, rec in s.machines.items()} == expected


def test_a_re_registration_from_a_new_address_keeps_the_subnet():
    s = state_with(register("m1", "192.0.2.1"), register("m2"), register("m1", "192.0.2.99"))
    assert (s.machines["m1"].address, s.machines["m1"].subnet) == ("192.0.2.99", "10.88.0.0/24")


def test_the_registration_answer_holds_the_subnet_and_an_exhausted_pool_says_none():
    s = state_with(register("m1", pool="10.7.0.0/24"))
    assert apply(s, register("m2", pool="10.7.0.0/24")).value == {"machine": "m2", "subnet": None}
    assert apply(s, register("m3")).value == {"machine": "m3", "subnet": "10.88.0.0/24"}


@pytest.mark.parametrize("pool", ["nope", "10.0.0.0/25", "fd00::/64", "10.0.0.1/16", "10.0.0.0/33"])
def test_a_bad_pool_is_rejected_naming_the_field(pool):
    s = state_with()
    before = s.snapshot()
    r = apply(s, register("m1", pool=pool))
    assert not r.ok and r.error is not None
    assert (r.error.code, r.error.field) == ("invalid", "pool")
    assert s.snapshot() == before


def test_a_machine_from_an_old_snapshot_restores_and_gets_a_subnet_at_its_next_registration():
    s = state_with(register("m1"), register("m2"), c.PutJob(spec=validate_spec(RAW)))
    obj = cbor2.loads(s.snapshot())
    del obj["machines"]["m1"]["subnet"]          # as written before subnets existed
    obj["machines"]["m2"]["subnet"] = "10.88.0.0/24"  # and another machine holds the lowest /24
    old = State.restore(cbor2.dumps(obj, canonical=True))
    assert old.machines["m1"].subnet is UNSET     # still a valid record, without a subnet
    assert "subnet" not in to_wire(old.machines["m1"])
    r = apply(old, c.Plan(epoch=1, place=[item(0)]))
    assert r.ok and r.value["placed"] == []
    assert "m1 has no container subnet" in r.value["rejected"][0]["reason"]
    assert apply(old, register("m1")).value["subnet"] == "10.88.1.0/24"   # not m2's, known from the restore
    assert apply(old, c.Plan(epoch=1, place=[item(0)])).value["placed"]


def test_a_new_subnet_wakes_every_machine_and_a_plain_re_registration_only_its_own():
    s = state_with(register("m1"), register("m2"))
    s.changed_machines.clear()
    apply(s, register("m3"))
    assert s.changed_machines == {"m1", "m2", "m3"}
    s.changed_machines.clear()
    apply(s, register("m3"))
    assert s.changed_machines == {"m3"}
    apply(s, register("m3", address="192.0.2.200"))   # its peers route through its address
    assert s.changed_machines == {"m1", "m2", "m3"}


# -- addresses ---------------------------------------------------------------------------------------------

def test_bridge_placements_get_the_lowest_free_addresses_and_host_placements_the_machine_address():
    host = {**validate_spec({**RAW, "name": "db", "network": "host"})}
    s = state_with(register("m1", "192.0.2.1"), c.PutJob(spec=validate_spec(RAW)), c.PutJob(spec=host))
    r = apply(s, c.Plan(epoch=1, place=[item(0), item(1, port=31001), item(0, job="db", port=31002),
                                        item(2, port=31003)]))
    assert r.ok and len(r.value["placed"]) == 4
    addr = {(p.job, p.replica): p.address for p in s.placements.values()}
    assert addr == {("web", 0): "10.88.0.2", ("web", 1): "10.88.0.3", ("db", 0): "192.0.2.1",
                    ("web", 2): "10.88.0.4"}
    # a stopped placement frees its address; a lost one too (it holds no resources)
    first = next(p for p in s.placements.values() if p.address == "10.88.0.2")
    assert apply(s, c.Plan(epoch=1, stop=[{"placement": first.id}])).ok
    assert apply(s, c.PlacementUpdate(placement=first.id, machine="m1", state="stopped")).ok
    assert apply(s, c.Plan(epoch=1, place=[item(3, port=31004)])).ok
    assert sorted(p.address for p in s.placements.values() if p.job == "web") == \
        ["10.88.0.2", "10.88.0.3", "10.88.0.4"]


@pytest.mark.parametrize("runtime", ["process", "sim"])
def test_a_machine_whose_runtime_makes_no_namespaces_runs_bridge_jobs_on_its_own_address(runtime):
    s = state_with(register("m1", "192.0.2.1", runtime=runtime),
                   c.PutJob(spec=validate_spec({**RAW, "ports": [{"name": "http", "to": 8080}]})))
    pid = apply(s, c.Plan(epoch=1, place=[item(0)])).value["placed"][0]
    assert s.placements[pid].address == "192.0.2.1"
    assert apply(s, c.PlacementUpdate(placement=pid, machine="m1", state="running", health="healthy")).ok
    (endpoint,) = s.discovery["web"]["endpoints"].values()
    assert (endpoint["address"], endpoint["port"]) == ("192.0.2.1", 31000)


def test_a_full_subnet_rejects_the_item_saying_so():
    s = state_with(register("m1"), c.PutJob(spec=validate_spec({**RAW, "replicas": 300, "ports": []})))
    plan = [{**item(i), "ports": {}, "resources": {"cpu": 1, "memory": 1, "pids": 1}} for i in range(254)]
    r = apply(s, c.Plan(epoch=1, place=plan))
    assert len(r.value["placed"]) == 253           # .2 .. .254
    assert r.value["rejected"] == [{"item": 253, "reason": "no free container address left in m1's subnet "
                                                            "10.88.0.0/24"}]


@pytest.mark.parametrize("ports,published", [
    ([{"name": "http"}], 31000),                 # the container listens on its allocated port (PORT_HTTP)
    ([{"name": "http", "to": 8080}], 8080),      # or on the port it names
])
def test_discovery_publishes_a_bridge_endpoint_at_the_container_address(ports, published):
    s = state_with(register("m1"), c.PutJob(spec=validate_spec({**RAW, "ports": ports})))
    pid = apply(s, c.Plan(epoch=1, place=[item(0)])).value["placed"][0]
    assert apply(s, c.PlacementUpdate(placement=pid, machine="m1", state="running", health="healthy")).ok
    (endpoint,) = s.discovery["web"]["endpoints"].values()
    assert (endpoint["address"], endpoint["port"]) == ("10.88.0.2", published)


def test_replicas_that_apply_the_same_commands_allocate_alike():
    cmds = [register("m2"), register("m1"), c.PutJob(spec=validate_spec(RAW)),
            c.Plan(epoch=1, place=[item(0), item(1, "m2"), item(2, port=31001)])]
    a, b = state_with(*cmds), state_with(*cmds)
    assert a.snapshot() == b.snapshot()
    assert State.restore(a.snapshot()).subnets == a.subnets


# -- what the agent is told ----------------------------------------------------------------------------------

def test_assignments_carry_the_machine_subnet_and_its_peers_routes():
    s = state_with(register("m1", "192.0.2.1"), register("m2", "192.0.2.2"),
                   register("m3", "192.0.2.3", pool="10.88.0.0/24"))   # m3: pool exhausted, no subnet
    assert _assignments(s, "m1")["network"] == {
        "subnet": "10.88.0.0/24", "gateway": "10.88.0.1",
        "peers": [{"machine": "m2", "address": "192.0.2.2", "subnet": "10.88.1.0/24"}]}
    assert _assignments(s, "m3")["network"]["subnet"] is None
    assert [p["machine"] for p in _assignments(s, "m3")["network"]["peers"]] == ["m1", "m2"]


def test_the_peers_follow_every_machine_change_and_each_state_object_its_own():
    """The peer list is kept per machines-table index (agent_api._SubnetHolders): it must still move with each
    registration, address change and restore, and two states never share one."""
    s = state_with(register("m1", "192.0.2.1"), register("m2", "192.0.2.2"))
    other = state_with(register("m1", "192.0.2.1"), register("m2", "192.0.2.9"))   # same table index
    assert s.table_index["machines"] == other.table_index["machines"]
    peers = lambda st, m: [(p["machine"], p["address"]) for p in _assignments(st, m)["network"]["peers"]]  # noqa: E731
    assert peers(s, "m1") == [("m2", "192.0.2.2")] and peers(other, "m1") == [("m2", "192.0.2.9")]
    assert peers(s, "m1") == [("m2", "192.0.2.2")]
    apply(s, register("m3", "192.0.2.3"))
    assert peers(s, "m1") == [("m2", "192.0.2.2"), ("m3", "192.0.2.3")]
    apply(s, register("m2", "192.0.2.22"))                                          # a new address
    assert peers(s, "m3") == [("m1", "192.0.2.1"), ("m2", "192.0.2.22")]
    r = State.restore(s.snapshot())
    apply(s, register("m4", "192.0.2.4"))
    assert peers(r, "m1") == [("m2", "192.0.2.22"), ("m3", "192.0.2.3")]
    assert peers(s, "m1")[-1] == ("m4", "192.0.2.4")


# -- the pure helpers ----------------------------------------------------------------------------------------

def test_subnet_helpers():
    assert allocate_subnet("10.88.0.0/22", {int.from_bytes(bytes([10, 88, 0, 0]), "big")}) == "10.88.1.0/24"
    assert allocate_subnet("10.88.0.0/24", {int.from_bytes(bytes([10, 88, 0, 0]), "big")}) is None
    assert allocate_address("10.88.3.0/24", []) == "10.88.3.2"
    assert allocate_address("10.88.3.0/24", ["10.88.3.2", "10.88.3.4"]) == "10.88.3.3"
    assert gateway("10.88.3.0/24") == "10.88.3.1"
    with pytest.raises(PoolError):
        parse_pool("10.88.0.0/25")


# -- the spec --------------------------------------------------------------------------------------------------

def test_egress_and_publish_defaults():
    spec = validate_spec(RAW)
    assert (spec["network"], spec["egress"], spec["ports"][0]["publish"]) == ("bridge", "masquerade", False)
    default = validate_spec({k: v for k, v in RAW.items() if k != "network"})
    assert default["network"] == "bridge"         # isolation is the default; host is asked for
    spec = validate_spec({**RAW, "egress": "none", "ports": [{"name": "http", "publish": True}]})
    assert (spec["egress"], spec["ports"][0]["publish"]) == ("none", True)


@pytest.mark.parametrize("change,field", [
    ({"network": "host", "ports": [{"name": "http", "publish": True}]}, "ports[0].publish"),
    ({"network": "host", "egress": "none"}, "egress"),
    ({"egress": "nat"}, "egress"),
    ({"ports": [{"name": "http", "publish": "yes"}]}, "ports[0].publish"),
])
def test_bad_network_fields_are_refused_naming_the_field(change, field):
    with pytest.raises(SpecError) as e:
        validate_spec({**RAW, **change})
    assert [p.field for p in e.value.problems] == [field]


def test_only_machines_that_make_namespaces_take_a_subnet_and_are_woken_by_a_new_one():
    """A sim or process fleet (bench/scale.py's 10,000 simulated machines) takes no subnet: its registrations
    wake no other machine's assignment watch, and a runc machine's new subnet wakes only the runc machines
    (they route to it); a machine registering again as runc takes its subnet then."""
    s = state_with(register("s1", runtime="sim"), register("p1", runtime="process"), register("r1"))
    assert (s.machines["s1"].subnet, s.machines["p1"].subnet, s.machines["r1"].subnet) == (None, None, "10.88.0.0/24")
    s.changed_machines.clear()
    assert apply(s, register("s2", runtime="sim")).ok and s.changed_machines == {"s2"}
    s.changed_machines.clear()
    assert apply(s, register("r2")).ok and s.changed_machines == {"r1", "r2"}
    assert apply(s, register("s1", runtime="runc")).ok and s.machines["s1"].subnet == "10.88.2.0/24"
