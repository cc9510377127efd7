"""An agent's --subnet-pool (issue 16: container subnets "default inside 10.88.0.0/16, configurable"): the CLI
refuses a pool that is not an IPv4 network of at least one /24, naming the flag; the agent's registration carries
the pool; the control plane allocates the machine's /24 inside it (and inside 10.88.0.0/16 without one)."""
from __future__ import annotations

import ipaddress

import pytest
from click.testing import CliRunner

from raftctl.agent.config import AgentConfig
from raftctl.cli.main import cli
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.records import Registration, from_wire
from raftctl.statemachine.state import State


def register(s: State, cfg: AgentConfig) -> str:
    reg = from_wire(Registration, cfg.registration())
    res = apply(s, c.RegisterMachine(machine=reg.machine, address=reg.address, fault_domain=dict(reg.fault_domain),
                                     labels=dict(reg.labels), resources=dict(reg.resources), ports=list(reg.ports),
                                     runtime=reg.runtime, api=reg.api, pool=reg.pool))
    assert res.ok, res.error
    subnet = s.machines[cfg.machine].subnet
    assert isinstance(subnet, str)
    return subnet


def cfg(machine: str, pool: str = "") -> AgentConfig:
    return AgentConfig(machine=machine, servers=["http://127.0.0.1:1"], token="t", data_dir="/nonexistent",
                       cpu=1000, memory=1 << 30, runtime="runc", pool=pool)


def test_the_registration_carries_the_pool_and_the_subnet_comes_from_it() -> None:
    s = State()
    assert "pool" not in cfg("m0").registration()
    assert ipaddress.ip_network(register(s, cfg("m0"))).subnet_of(ipaddress.ip_network("10.88.0.0/16"))
    a, b = register(s, cfg("m1", "172.31.8.0/22")), register(s, cfg("m2", "172.31.8.0/22"))
    assert (a, b) == ("172.31.8.0/24", "172.31.9.0/24")


@pytest.mark.parametrize("pool", ["10.0.0.0/25", "not-a-net", "fd00::/64", "10.0.0.1/24"])
def test_a_bad_pool_is_refused_naming_the_flag(pool: str, tmp_path) -> None:
    r = CliRunner().invoke(cli, ["agent", "--id", "m", "--server", "http://127.0.0.1:1", "--token", "t",
                                 "--data-dir", str(tmp_path), "--runtime", "sim", "--subnet-pool", pool])
    assert r.exit_code == 2 and "--subnet-pool" in r.output, r.output
