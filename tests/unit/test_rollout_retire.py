"""retire.py: a batch leaves discovery within its budget; retired placements stop after the drain delay."""
from __future__ import annotations

import pytest

from raftctl.node.rollout import retire
from raftctl.node.rollout.view import Batch
from raftctl.statemachine import commands as c

from .record_fixtures import as_placement
from .rollout_helpers import EPOCH, NOW, V1, V2, job, p, seen, spec

STOP = [
    # (case, retired ms ago per placement (None: not retired), drain delay ms, stopped)
    ("nothing retired", [None, None], 500, []),
    ("within the delay", [499, 1], 500, []),
    ("at the delay", [500, None], 500, ["a"]),
    ("past the delay, in placement order", [9_000, 600, 100], 500, ["a", "b"]),
    ("no delay: at once", [0], 0, ["a"]),
]


@pytest.mark.parametrize("case,ago,delay,stopped", STOP, ids=[s[0] for s in STOP])
def test_stop_after_the_drain_delay(case, ago, delay, stopped):
    pl = [p(pid, i, 1, **({} if a is None else {"retiring_at": NOW - a})) for i, (pid, a) in enumerate(zip("abc", ago))]
    cmds = retire.stop(seen(job(spec("1", drain_delay_ms=delay)), pl), EPOCH)
    assert cmds == ([c.Plan(epoch=EPOCH, place=[], stop=[{"placement": x, "reason": "retired"} for x in stopped])]
                    if stopped else [])


def test_a_stop_carries_the_retirement_reason():
    pl = [p("a", 0, 1, retiring_at=NOW - 600, reason="machine m1 draining"), p("b", 1, 1, retiring_at=NOW - 600)]
    assert retire.stop(seen(job(V1), pl), EPOCH)[0].stop == [
        {"placement": "a", "reason": "machine m1 draining"}, {"placement": "b", "reason": "retired"}]


def test_placements_that_are_not_live_are_not_stopped_again():
    pl = [p("a", 0, 1, state="stopped", retiring_at=NOW - 600), {**p("b", 1, 1, retiring_at=NOW - 600), "desired": "stop"}]
    assert retire.stop(seen(job(V1, V2), pl), EPOCH) == []


A, B, C = p("a", 0, 1), p("b", 1, 1), p("c", 2, 1)
RETIRE = [
    # (case, candidates, budget, retired)
    ("no candidates", [], 3, []),
    ("budget spent", [A, B], 0, []),
    ("negative budget", [A, B], -2, []),
    ("the first within the budget", [A, B, C], 2, ["a", "b"]),
    ("budget beyond the candidates", [C, A], 5, ["c", "a"]),
    ("one already retiring counts against the budget", [{**A, "retiring_at": 1}, B, C], 2, ["b"]),
]


@pytest.mark.parametrize("case,candidates,budget,retired", RETIRE, ids=[r[0] for r in RETIRE])
def test_retire_a_batch_within_its_budget(case, candidates, budget, retired):
    cmds = retire.retire(Batch([(as_placement(x), f"why {x['id']}") for x in candidates], budget), EPOCH)
    assert cmds == ([c.Retire(epoch=EPOCH, placements=retired, reason=f"why {retired[0]}")] if retired else [])
