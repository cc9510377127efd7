"""``Decision.timed`` (raftctl/node/rollout): the controller skips a job whose last decision did nothing and was
not timed, until its records move. That is sound only if such a decision stays "nothing" however late it is
taken. Checked on random observations: versions, placement states and health, retirements, a deployment in any
status, drains with and without deadlines."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from .rollout_helpers import NOW, V1, V2, deployment, job, p, run

LATER = (1, 299, 300, 501, 20_001, 3_600_000)


@st.composite
def observations(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 5))
    pls = []
    for i in range(n):
        extra: dict[str, Any] = {}
        if draw(st.booleans()) and draw(st.booleans()):
            extra["retiring_at"] = NOW - draw(st.integers(0, 1_000))
        if draw(st.integers(0, 5)) == 0:
            extra["desired"] = "stop"
        pls.append(p(f"p{i}", draw(st.integers(0, 4)), draw(st.sampled_from([1, 2])),
                     machine=draw(st.sampled_from(["m1", "m2", "m3"])),
                     state=draw(st.sampled_from(["pending", "running", "lost", "exited"])),
                     health=draw(st.sampled_from(["unknown", "healthy", "unhealthy"])),
                     healthy_at=NOW - draw(st.integers(0, 1_000)), **extra))
    dep = None
    if draw(st.booleans()):
        dep = deployment(version=draw(st.sampled_from([1, 2])),
                         status=draw(st.sampled_from(["running", "successful", "failed"])),
                         deadline=NOW + draw(st.integers(-100, 30_000)), promoted=draw(st.booleans()),
                         canary=draw(st.integers(0, 1)))
    drains = {m: {"since": NOW - 1_000, "deadline": NOW + draw(st.integers(-100, 10_000)) if draw(st.booleans()) else None}
              for m in ("m1", "m2", "m3") if draw(st.integers(0, 3)) == 0}
    ms = {m: {"id": m, "drain": drains.get(m)} for m in ("m1", "m2", "m3")}
    specs = (V1, V2) if draw(st.booleans()) else (V1,)
    return {"j": job(*specs, replicas=draw(st.integers(0, 4))), "placements": pls, "dep": dep,
            "published": draw(st.integers(0, 4)), "ms": ms}


@settings(max_examples=400, deadline=None, database=None)
@given(observations())
def test_an_untimed_decision_to_do_nothing_stays_nothing_at_any_later_time(o: dict[str, Any]) -> None:
    d = run(o["j"], o["placements"], dep=o["dep"], published=o["published"], ms=o["ms"])
    if d.timed or d.commands or d.held:
        return
    for dt in LATER:
        later = run(o["j"], o["placements"], dep=o["dep"], published=o["published"], ms=o["ms"], now=NOW + dt)
        assert later.commands == [] and later.held is None, (dt, later)


def test_what_reads_the_clock_is_timed() -> None:
    steady = [p("a", 0, 1), p("b", 1, 1), p("c", 2, 1)]
    assert run(job(V1), steady).timed is False
    assert run(job(V1), [p("a", 0, 1, state="pending", health="unknown")], published=0).timed is False
    assert run(job(V1), [p("a", 0, 1, retiring_at=NOW - 1)] + steady[1:]).timed is True
    assert run(job(V1, V2), steady, dep=deployment()).timed is True
    assert run(job(V1, V2), steady, dep=deployment(status="failed")).timed is False
    drained = {"m1": {"id": "m1", "drain": {"since": NOW - 1, "deadline": None}}}
    assert run(job(V1), steady, ms=drained).timed is True
