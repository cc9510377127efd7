"""The agent's convergence diff and bridge addresses (issue 16): a bridge placement is not started while a container
that is going (a placement declared lost while its machine was down, an orphan, a stop in flight) still holds the
address the control plane gave it. Seen in tests/agent/test_bridge_cluster.py with a 3 s heartbeat TTL: the agent
back from a kill -9 made a new namespace with 10.88.0.2 on its bridge 200 ms before it removed the lost
placement's container holding 10.88.0.2."""
from __future__ import annotations

from typing import Any

import pytest

from raftctl.agent.converge import StopInFlight, plan, typed

BRIDGE = {"name": "web", "network": "bridge"}
HOST = {"name": "web", "network": "host"}
FRESH = StopInFlight(age_s=1.0, bound_s=25.0)


def p(pid: str, address: str, desired: str = "run", state: str = "pending", spec: Any = BRIDGE) -> dict:
    return {"id": pid, "address": address, "desired": desired, "state": state, "spec": spec}


LOST = p("old", "10.88.0.2", state="lost")
NEW = p("new", "10.88.0.2")

# name, placements, local, existing, stopping, then the expected start, stop and held
CASES = [
    ("the lost placement's container, adopted, holds the new one's address",
     [LOST, NEW], {"old"}, {"old"}, {}, [], ["old"], {"new": "old"}),
    ("held by a container only the driver lists", [LOST, NEW], set(), {"old"}, {}, [], ["old"], {"new": "old"}),
    ("held while the stop is in flight", [LOST, NEW], set(), {"old"}, {"old": FRESH}, [], [], {"new": "old"}),
    ("started once that container is gone", [LOST, NEW], set(), set(), {}, ["new"], [], {}),
    ("a placement told to stop holds its address too",
     [p("old", "10.88.0.2", desired="stop", state="running"), NEW], {"old"}, {"old"}, {}, [], ["old"],
     {"new": "old"}),
    ("another address: started beside the stop", [LOST, p("new", "10.88.0.3")], {"old"}, {"old"}, {},
     ["new"], ["old"], {}),
    ("a wanted container of another address holds nothing", [p("run", "10.88.0.3", state="running"), NEW],
     {"run"}, {"run"}, {}, ["new"], [], {}),
    # host placements carry the machine's address: one going never holds back another
    ("host placements are never held", [p("old", "10.77.0.1", state="lost", spec=HOST),
                                        p("new", "10.77.0.1", spec=HOST)], {"old"}, {"old"}, {},
     ["new"], ["old"], {}),
    ("an orphan nobody assigned holds nothing it is not known to hold", [NEW], {"zzz"}, {"zzz"}, {},
     ["new"], ["zzz"], {}),
]


@pytest.mark.parametrize("name,placements,local,existing,stopping,start,stop,held", CASES,
                         ids=[c[0] for c in CASES])
def test_plan_holds_a_bridge_start_while_its_address_is_still_held(name, placements, local, existing, stopping,
                                                                    start, stop, held):
    a = plan(placements, local, existing=existing, stopping=stopping)
    assert [x["id"] for x in a.start] == start
    assert a.stop == stop
    assert a.held == held


def test_held_with_specs_as_the_agent_holds_them():
    """The agent plans on JobSpec records (converge.typed), not on the wire form."""
    wire = {"name": "web", "image": "w:1", "command": ["w"], "replicas": 1, "network": "bridge"}
    assigned, refused = typed([{**LOST, "spec": wire}, {**NEW, "spec": wire}])
    assert refused == {}
    assert plan(assigned, {"old"}).held == {"new": "old"}
    assert [x["id"] for x in plan(assigned, set()).start] == ["new"]
