"""drain.py: which replicas leave a draining machine this pass, within the job's disruption budget."""
from __future__ import annotations

import pytest

from raftctl.node.rollout import drain

from .rollout_helpers import NOW, V1, job, machines, p, seen, spec

OPEN = {"since": 0, "deadline": None}
CASES = [
    # (case, placements as (id, machine, outdated, retiring), drains, published, disruption, budget, candidates, held)
    ("no drain", [("a", "m1", 0, False)], {}, 3, 1, 1, [], False),
    ("one draining machine", [("b", "m1", 0, False), ("a", "m1", 0, False), ("c", "m2", 0, False)],
     {"m1": OPEN}, 3, 1, 1, ["a", "b"], False),
    ("two draining machines share one budget", [("a", "m1", 0, False), ("b", "m2", 0, False), ("c", "m3", 0, False)],
     {"m1": OPEN, "m2": OPEN}, 3, 1, 1, ["a", "b"], False),
    ("a replica missing spends the budget", [("a", "m1", 0, False), ("b", "m2", 0, False)],
     {"m1": OPEN}, 2, 1, 0, ["a"], True),
    ("a bigger budget", [("a", "m1", 0, False), ("b", "m1", 0, False), ("c", "m2", 0, False)],
     {"m1": OPEN}, 2, 2, 1, ["a", "b"], False),
    ("a budget of 0 holds every drain", [("a", "m1", 0, False)], {"m1": OPEN}, 3, 0, 0, ["a"], True),
    ("retiring ones are not candidates again", [("a", "m1", 0, True), ("b", "m1", 0, False)],
     {"m1": OPEN}, 2, 1, 0, ["b"], True),
    ("all already retiring: nothing held", [("a", "m1", 0, True)], {"m1": OPEN}, 2, 1, 0, [], False),
    ("deadline not yet passed", [("a", "m1", 0, False), ("b", "m1", 0, False)],
     {"m1": {"since": 0, "deadline": NOW}}, 1, 1, -1, ["a", "b"], True),
    ("deadline passed: all go", [("a", "m1", 0, False), ("b", "m1", 0, False), ("c", "m2", 0, False)],
     {"m1": {"since": 0, "deadline": NOW - 1}}, 1, 1, 2, ["a", "b"], False),
    ("outdated replicas are the deploy's, not the drain's", [("a", "m1", 1, False), ("b", "m1", 0, False)],
     {"m1": OPEN}, 3, 1, 1, ["b"], False),
]


@pytest.mark.parametrize("case,pl,drains,published,disruption,budget,candidates,held", CASES,
                         ids=[x[0] for x in CASES])
def test_drain_batch(case, pl, drains, published, disruption, budget, candidates, held):
    j = job(V1, spec("2", disruption=disruption))
    placements = [p(pid, i, 1 if old else 2, machine=m, **({"retiring_at": NOW - 1} if r else {}))
                  for i, (pid, m, old, r) in enumerate(pl)]
    batch, why = drain.batch(seen(j, placements, published=published, ms=machines(**drains)))
    assert [x.id for x, _ in batch.candidates] == candidates
    assert all(reason == f"machine {x.machine} draining" for x, reason in batch.candidates)
    if drains:
        assert batch.budget == budget
    assert (why is not None) == held


def test_a_held_drain_names_the_job_its_budget_and_what_is_unavailable():
    pl = [p("a", 0, 1, machine="m1"), p("b", 1, 1, machine="m2"), p("c", 2, 1, machine="m3")]
    _, why = drain.batch(seen(job(V1), pl, published=1, ms=machines(m1=OPEN)))
    assert why == ("drain held back: job web is at its disruption budget (max_unavailable 1, "
                   "2 of 3 replicas unavailable)")
