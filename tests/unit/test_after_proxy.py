"""A write handled here after its proxied copy went unanswered never claims "nothing was applied".

Seed 3 x 150 s (07:46): a delete proxied to the leader n2, which was killed before it answered, was
proposed on the follower n1, which by then knew no leader: the proposer refused it (503 unavailable, "not
proposed, nothing was applied"), true of n1's attempt only: n2 had committed the proxied copy, and a
consistent read 2 s later found the job gone, which the linearizability checker flagged."""
from __future__ import annotations

from raftctl.errors import OutcomeUnknown, Unavailable, ValidationError
from raftctl.node.http import PROXIED_TO, after_proxy


def test_not_proposed_here_after_an_unanswered_proxy_is_an_unknown_outcome():
    exc = after_proxy({PROXIED_TO: "http://10.77.0.12:8000"},
                      Unavailable("this replica has known no leader for 3 s; nothing was applied"))
    assert isinstance(exc, OutcomeUnknown) and exc.http_status == 503 and exc.code == "outcome_unknown"
    assert "http://10.77.0.12:8000" in str(exc) and "may have applied" in str(exc)


def test_without_a_proxied_copy_not_applied_stays_not_applied():
    exc = Unavailable("nothing was applied")
    assert after_proxy({}, exc) is exc


def test_other_answers_pass_through_after_a_proxy():
    unknown = OutcomeUnknown("may or may not")
    bad = ValidationError("replicas must be a number", field="replicas")
    assert after_proxy({PROXIED_TO: "x"}, unknown) is unknown
    assert after_proxy({PROXIED_TO: "x"}, bad) is bad
