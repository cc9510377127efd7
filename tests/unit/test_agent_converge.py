"""The agent's convergence diff, table-driven."""
import pytest

from raftctl.agent.converge import plan

SPEC = {"name": "web"}


def p(pid: str, desired: str = "run", state: str = "pending", spec=SPEC) -> dict:
    return {"id": pid, "desired": desired, "state": state, "spec": spec}


CASES = [
    ("start what is missing", [p("a"), p("b")], {"a"}, ["b"], [], []),
    ("stop what is no longer wanted", [p("a", desired="stop", state="running")], {"a"}, [], ["a"], []),
    ("stop containers of placements declared lost", [p("a", state="lost")], {"a"}, [], ["a"], []),
    ("never restart a lost placement", [p("a", state="lost")], set(), [], [], []),
    ("stop orphans nobody assigned", [], {"zzz"}, [], ["zzz"], []),
    ("report a stop that already happened", [p("a", desired="stop", state="running")], set(), [], [], ["a"]),
    ("nothing to do for stopped", [p("a", desired="stop", state="stopped")], set(), [], [], []),
    ("no spec (version pruned): do not start", [p("a", spec=None)], set(), [], [], []),
    ("running and wanted: leave alone", [p("a", state="running")], {"a"}, [], [], []),
]


@pytest.mark.parametrize("name,placements,local,start,stop,reported", CASES, ids=[c[0] for c in CASES])
def test_plan(name, placements, local, start, stop, reported):
    a = plan(placements, local)
    assert [x["id"] for x in a.start] == start
    assert a.stop == stop
    assert a.report_stopped == reported
