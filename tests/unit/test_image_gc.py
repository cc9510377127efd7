"""Which images an agent's garbage collection removes (raftctl.agent.images.images_to_collect, pure)."""
from __future__ import annotations

import pytest

from raftctl.agent.images import images_to_collect

A, B, C = ("sha256:" + ch * 64 for ch in "abc")
GRACE = 600.0


@pytest.mark.parametrize("last_used, in_use, now, grace, expected, why", [
    ({A: 1000.0}, set(), 1000.0 + GRACE + 1, GRACE, [A], "unused for longer than the grace period"),
    ({A: 1000.0}, set(), 1000.0 + GRACE, GRACE, [], "exactly the grace period: kept"),
    ({A: 1000.0}, set(), 1000.0 + 5, GRACE, [], "used a moment ago"),
    ({A: 1000.0}, {A}, 1000.0 + 10 * GRACE, GRACE, [], "in use, however long ago it was recorded"),
    ({A: 0.0, B: 0.0, C: 5000.0}, {B}, 5000.0 + 1, GRACE, [A], "B in use, C fresh"),
    ({C: 0.0, A: 0.0, B: 0.0}, set(), 10 * GRACE, GRACE, [A, B, C], "sorted, so a pass is deterministic"),
    ({A: 0.0}, set(), 10 * GRACE, 0.0, [], "grace 0: GC off"),
    ({A: 0.0}, set(), 10 * GRACE, -1.0, [], "negative grace: GC off"),
    ({}, {A}, 10 * GRACE, GRACE, [], "nothing recorded: nothing to remove"),
    ({A: 2000.0}, set(), 1000.0, GRACE, [], "a last use after now (clock stepped back): kept"),
])
def test_images_to_collect(last_used, in_use, now, grace, expected, why):
    assert images_to_collect(last_used, in_use, now, grace) == expected, why
