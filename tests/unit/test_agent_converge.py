"""The agent's convergence diff, table-driven: what to start, stop, stop again and report."""
import pytest

from raftctl.agent.converge import StopInFlight, plan

SPEC = {"name": "web"}


def p(pid: str, desired: str = "run", state: str = "pending", spec=SPEC) -> dict:
    return {"id": pid, "desired": desired, "state": state, "spec": spec}


FRESH = StopInFlight(age_s=1.0, bound_s=25.0)
HUNG = StopInFlight(age_s=26.0, bound_s=25.0)

# name, placements, local (supervised), existing (the driver's view), stops in flight,
# then the expected start, stop, retry, report_stopped
CASES = [
    ("start what is missing", [p("a"), p("b")], {"a"}, {"a"}, {}, ["b"], [], [], []),
    ("stop what is no longer wanted", [p("a", desired="stop", state="running")], {"a"}, {"a"}, {},
     [], ["a"], [], []),
    ("stop containers of placements declared lost", [p("a", state="lost")], {"a"}, {"a"}, {}, [], ["a"], [], []),
    ("never restart a lost placement", [p("a", state="lost")], set(), set(), {}, [], [], [], []),
    ("stop orphans nobody assigned", [], {"zzz"}, {"zzz"}, {}, [], ["zzz"], [], []),
    ("report a stop that already happened", [p("a", desired="stop", state="running")], set(), set(), {},
     [], [], [], ["a"]),
    ("nothing to do for stopped", [p("a", desired="stop", state="stopped")], set(), set(), {}, [], [], [], []),
    ("no spec (version pruned): do not start", [p("a", spec=None)], set(), set(), {}, [], [], [], []),
    ("running and wanted: leave alone", [p("a", state="running")], {"a"}, {"a"}, {}, [], [], [], []),
    ("a stop in flight within its bound: wait for it", [p("a", desired="stop", state="running")], {"a"}, {"a"},
     {"a": FRESH}, [], [], [], []),
    ("a stop in flight for longer than its bound: stop again", [p("a", desired="stop", state="running")],
     {"a"}, {"a"}, {"a": HUNG}, [], [], ["a"], []),
    ("a hung stop of an orphan is retried too", [], set(), {"zzz"}, {"zzz": HUNG}, [], [], ["zzz"], []),
    ("container running but the agent thinks it stopped: stop again",
     [p("a", desired="stop", state="running")], set(), {"a"}, {}, [], ["a"], [], []),
    ("container of a lost placement the agent forgot: stop it", [p("a", state="lost")], set(), {"a"}, {},
     [], ["a"], [], []),
    ("a container the driver holds that nobody assigned: stop it", [], set(), {"zzz"}, {}, [], ["zzz"], [], []),
    ("do not report stopped while the container still exists", [p("a", desired="stop", state="running")],
     set(), {"a"}, {"a": FRESH}, [], [], [], []),
    ("a wanted placement whose stop is still in flight is not started twice", [p("a")], set(), {"a"},
     {"a": FRESH}, [], [], [], []),
    ("a wanted container the driver holds is never stopped", [p("a", state="running")], {"a"}, {"a", "b"}, {},
     [], ["b"], [], []),
]


@pytest.mark.parametrize("name,placements,local,existing,stopping,start,stop,retry,reported", CASES,
                         ids=[c[0] for c in CASES])
def test_plan(name, placements, local, existing, stopping, start, stop, retry, reported):
    a = plan(placements, local, existing=existing, stopping=stopping)
    assert [x["id"] for x in a.start] == start
    assert a.stop == stop
    assert a.retry == retry
    assert a.report_stopped == reported


def test_without_driver_view_the_plan_diffs_the_supervised_set():
    a = plan([p("a", desired="stop", state="running"), p("b")], {"a"})
    assert (a.stop, [x["id"] for x in a.start]) == (["a"], ["b"])
