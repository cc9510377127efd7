"""The agent's nftables table as text (nft.render) and the bridge fields of a ContainerSpec (issue 16): no root
needed. The rules' effect is tests/agent/test_bridge.py's."""
from __future__ import annotations

import pytest

from raftctl.agent import nft
from raftctl.agent.netnames import Names
from raftctl.agent.runtime.base import ContainerSpec, RuntimeError_
from raftctl.statemachine.records import JobSpec, from_wire
from raftctl.statemachine.spec import validate_spec

A = nft.Endpoint(id="web-00001", address="10.88.0.2", publish=((31000, 8080),))
B = nft.Endpoint(id="db-00002", address="10.88.0.3", egress="none")


def test_the_table_holds_one_dnat_per_published_port_and_the_egress_of_each_container():
    text = nft.render("raftctl_t", "rbr0", "10.88.0.0/24", ["10.88.1.0/24"], [A, B])
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:2] == ["table ip raftctl_t", "delete table ip raftctl_t"]      # replaced whole
    assert "set subnets { type ipv4_addr; flags interval; elements = { 10.88.0.0/24, 10.88.1.0/24 } }" in lines
    for proto in ("tcp", "udp"):    # prerouting and output: from elsewhere and from the host itself
        rule = f'fib daddr type local {proto} dport 31000 dnat to 10.88.0.2:8080 comment "web-00001"'
        assert lines.count(rule) == 2
    assert 'ip saddr 10.88.0.3 ip daddr != @subnets drop comment "db-00002"' in lines     # egress none: forward
    assert "ip saddr 10.88.0.0/24 ip daddr != @subnets masquerade" in lines               # the rest leave masqueraded
    assert not any("10.88.0.2" in x for x in lines if "dnat to" not in x)   # a plain container needs no rule of its own
    assert 'iifname "rbr0" ip daddr 127.0.0.0/8 drop' in lines


def test_no_container_no_rule_but_the_machine_ones():
    text = nft.render("raftctl_t", "rbr0", "10.88.0.0/24", [], [])
    assert "dnat" not in text.replace("ct status dnat", "") and "comment" not in text
    # a container that publishes nothing and may leave changes nothing: no nft call on its start
    assert nft.render("raftctl_t", "rbr0", "10.88.0.0/24", [], [nft.Endpoint(id="c", address="10.88.0.9")]) == text


@pytest.mark.parametrize("args,field", [
    (("bad-name", "rbr0", "10.88.0.0/24", [], []), "table"),
    (("t", "a bridge", "10.88.0.0/24", [], []), "bridge"),
    (("t", "rbr0", "10.88.0.0/33", [], []), "subnet"),
    (("t", "rbr0", "10.88.0.0/24", ["x"], []), "peers"),
    (("t", "rbr0", "10.88.0.0/24", [], [nft.Endpoint(id="c", address="10.88.0.300")]), "c.address"),
    (("t", "rbr0", "10.88.0.0/24", [], [nft.Endpoint(id="c", address="10.88.0.2", publish=((0, 80),))]),
     "c.publish"),
])
def test_bad_input_is_refused_naming_the_field(args, field):
    with pytest.raises(nft.NftError, match=f"^{field}:"):
        nft.render(*args)


def test_names_carry_the_cluster_and_machine_and_fit_the_kernel_limits():
    a, b, other = Names("0123456789ab", "m1"), Names("0123456789ab", "m1-x"), Names("ba9876543210", "m1")
    assert len(a.bridge) <= 15 and a.bridge.startswith("r01234567")
    assert len({a.bridge, b.bridge, other.bridge}) == 3 and len({a.table, b.table, other.table}) == 3
    assert all(len(v) <= 15 for v in a.veths("web-00001"))
    assert a.veths("web-00001") != other.veths("web-00001")          # placement ids repeat across clusters
    # no machine's namespace prefix is another's (machine ids may hold "-")
    assert not b.netns("x").startswith(a.netns("")) and not a.netns("x").startswith(b.netns(""))


RAW = {"name": "web", "image": "web:1", "command": ["web"], "network": "bridge", "egress": "none",
       "ports": [{"name": "http", "to": 8080, "publish": True}, {"name": "admin"}]}


def _spec(raw: dict) -> ContainerSpec:
    job = from_wire(JobSpec, validate_spec(raw))
    p = {"id": "web-00001", "job": "web", "replica": 0, "version": 1, "address": "10.88.0.2",
         "ports": {"http": 31000, "admin": 31001}}
    return ContainerSpec.from_placement(p, job, rootfs="/r", log_dir="/l")


def test_a_bridge_container_listens_on_its_own_ports_and_publishes_what_the_job_asks():
    s = _spec(RAW)
    assert (s.network, s.address, s.egress) == ("bridge", "10.88.0.2", "none")
    assert (s.env["PORT_HTTP"], s.env["PORT_ADMIN"], s.env["RAFTCTL_ADDRESS"]) == ("8080", "31001", "10.88.0.2")
    assert s.publish == [[31000, 8080]]
    assert ContainerSpec.from_dict(s.to_dict()) == s                 # spec.json keeps them for adoption


def test_a_host_container_keeps_the_host_ports():
    s = _spec({**RAW, "network": "host", "egress": "masquerade",
               "ports": [{"name": "http", "to": 8080}, {"name": "admin"}]})
    assert (s.address, s.publish, s.env["PORT_HTTP"]) == (None, [], "31000")


def test_an_unknown_egress_is_refused():
    with pytest.raises(RuntimeError_, match="egress"):
        ContainerSpec(id="c", job="j", replica=0, image="i", rootfs="/r", command=["x"], log_dir="/l", egress="open")
