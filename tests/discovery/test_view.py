"""The pure discovery view: parse_near, service_index, lookup ordering and shape."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from raftctl.discovery.view import lookup, parse_near, service_index
from raftctl.errors import ValidationError
from tests.discovery.conftest import endpoint


@pytest.mark.parametrize("text, want", [
    ("zone=z1", {"zone": "z1"}),
    ("zone=z1,region=r1", {"zone": "z1", "region": "r1"}),
    (" region = r1 , rack=k9 ", {"region": "r1", "rack": "k9"}),
    ("region=r1,zone=z1,rack=k1", {"region": "r1", "zone": "z1", "rack": "k1"}),
])
def test_parse_near_ok(text: str, want: dict) -> None:
    assert parse_near(text) == want


@pytest.mark.parametrize("text, words", [
    ("", "level=value"),
    ("   ", "level=value"),
    ("zone", "not level=value"),
    ("zone=", "not level=value"),
    ("=z1", "unknown level"),
    ("datacenter=d1", "unknown level"),
    ("zone=z1,,rack=k1", "empty item"),
    ("zone=z1,zone=z2", "twice"),
])
def test_parse_near_errors_name_the_field(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as ei:
        parse_near(text)
    assert ei.value.field == "near" and words in ei.value.message


TABLE = {
    "web": {"index": 42, "endpoints": {
        "web-0003": endpoint("web-0003", "m3", "10.0.0.3", 31003, region="r2", zone="z3", rack="k3"),
        "web-0001": endpoint("web-0001", "m2", "10.0.0.2", 31001, region="r1", zone="z2", rack="k2"),
        "web-0002": endpoint("web-0002", "m1", "10.0.0.1", 31002, region="r1", zone="z1", rack="k1"),
        "web-0004": endpoint("web-0004", "m1", "10.0.0.1", 31004, region="r1", zone="z1", rack="k1"),
        "web-0005": endpoint("web-0005", "m4", "10.0.0.4", 31005, region="r1", zone="z1", rack="k4"),
    }},
    "gone": {"index": 17, "endpoints": {}},
}
MACHINES = {"m9": {"id": "m9", "fault_domain": {"region": "r9", "zone": "z9", "rack": "k9"}}}


@pytest.mark.parametrize("near, order", [
    (None, ["web-0002", "web-0004", "web-0001", "web-0003", "web-0005"]),  # by machine, then placement
    ({"zone": "z2"}, ["web-0001", "web-0002", "web-0004", "web-0003", "web-0005"]),
    ({"region": "r2"}, ["web-0003", "web-0002", "web-0004", "web-0001", "web-0005"]),
    # same rack, then same zone, then same region, then elsewhere
    ({"region": "r1", "zone": "z1", "rack": "k4"}, ["web-0005", "web-0002", "web-0004", "web-0001", "web-0003"]),
    ({"zone": "nowhere"}, ["web-0002", "web-0004", "web-0001", "web-0003", "web-0005"]),
])
def test_lookup_orders_near_first_then_machine_then_placement(near, order) -> None:
    ans = lookup(TABLE, MACHINES, "web", near)
    assert ans["index"] == 42 and ans["service"] == "web"
    assert [e["placement"] for e in ans["endpoints"]] == order


@pytest.mark.parametrize("service, index, count", [("web", 42, 5), ("gone", 17, 0), ("never", 0, 0)])
def test_service_index_and_unknown_services(service: str, index: int, count: int) -> None:
    assert service_index(TABLE, service) == index
    ans = lookup(TABLE, MACHINES, service, None)
    assert ans == {"index": index, "service": service, "endpoints": ans["endpoints"]}
    assert len(ans["endpoints"]) == count


def test_lookup_answer_shape_and_no_aliasing() -> None:
    table = copy.deepcopy(TABLE)
    ans = lookup(table, MACHINES, "web", None)
    e = ans["endpoints"][0]
    assert set(e) == {"address", "port", "placement", "machine", "version", "fault_domain"}
    e["address"] = "mutated"
    e["fault_domain"]["zone"] = "mutated"
    assert table == TABLE


def test_lookup_fills_a_missing_fault_domain_from_the_machine() -> None:
    e = endpoint("x-1", "m9", "10.9.9.9", 1)
    e["fault_domain"] = {}
    ans = lookup({"x": {"index": 3, "endpoints": {"x-1": e}}}, MACHINES, "x", {"zone": "z9"})
    assert ans["endpoints"][0]["fault_domain"] == {"region": "r9", "zone": "z9", "rack": "k9"}


def test_an_entry_without_a_fault_domain_takes_its_machines_as_a_dict_or_a_record() -> None:
    old = {"address": "127.0.0.2", "port": 1, "placement": "p1", "machine": "m1", "version": 1}
    table = {"web": {"index": 3, "endpoints": {"p1": old}}}
    fd = {"region": "r1", "zone": "z1", "rack": "k1"}
    for machine in ({"fault_domain": fd}, SimpleNamespace(fault_domain=fd)):   # records.Machine has the attribute
        assert lookup(table, {"m1": machine}, "web")["endpoints"][0]["fault_domain"] == fd
    assert lookup(table, {}, "web")["endpoints"][0]["fault_domain"] == {}
