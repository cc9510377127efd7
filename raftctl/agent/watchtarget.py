"""Which replica an agent parks its assignment watch on, and when it gives that replica up.

Until session 9 every watch was parked on the leader (the replica answering heartbeats), the fencing fix of
jepsen-style finding 4: a watch parked on a paused or cut-off replica held the agent's stops for the watch's whole
wait. At 10,000 machines that put ~10,000 parked connections on the leader besides its heartbeats', and it reached
its connection limit (docs/scaling.md, session 8). Watches are now spread over the followers, one per machine by a
stable hash, and fenced by the leader's own word instead: every heartbeat answer carries ``assignments_index``,
the leader's change index of the machine's assignments (State.machine_change_index). A watch parked on a
follower that has not brought an index that high ``FOLLOWER_GRACE_S`` (or half the heartbeat interval) after the
leader told it is abandoned, and that follower is passed over for ``SHUN_S`` (the next watch goes to another
follower, or to the leader when none is left). A follower that answers an index below one already seen (a stale replica) is passed over the same way.

A leader that does not tell ``assignments_index`` (the previous release) gets the watches parked on itself, as
before. The index alone is exact enough: a change index is a value of the state index, which every replica
computes alike for one log position, so the leader's is never above a follower's answer for the same
assignments, except after the leader restored a snapshot (its floor): then the agent abandons the follower once,
asks, and takes the higher index (Replica.wait_for_machine).
"""
from __future__ import annotations

import asyncio
import zlib
from typing import Any

from raftctl.clock import Clock

FOLLOWER_GRACE_S = 2.0
"""How long a watch parked on a follower may lag a change the leader's heartbeat answer told, at the least
(``follower_grace``)."""
SHUN_S = 30.0
"""How long a follower that lagged, answered stale or did not answer is passed over."""


def follower_grace(heartbeat_s: float) -> float:
    """FOLLOWER_GRACE_S, or half the heartbeat interval when longer: a fleet told 10 s heartbeats has followers
    applying a placement storm a few seconds late, and passing them all over would park every watch on the
    leader again."""
    return max(FOLLOWER_GRACE_S, heartbeat_s / 2)


class WatchTarget:
    """One machine's choice of watch replica and what the leader told of its assignments."""

    def __init__(self, machine: str, clock: Clock) -> None:
        self.machine = machine
        self.clock = clock
        self.told: int | None = None       # the leader's last assignments_index (None: it does not tell)
        self.shunned: dict[str, float] = {}   # replica -> until (clock.monotonic)
        self._spot = zlib.crc32(machine.encode())
        self._told_moved = asyncio.Event()

    def note(self, told: Any) -> None:
        """Take a heartbeat answer's ``assignments_index``; anything but a non-negative integer is not telling."""
        value = told if isinstance(told, int) and not isinstance(told, bool) and told >= 0 else None
        if value != self.told:
            self.told = value
            self._told_moved.set()

    def choose(self, servers: list[str], live: str | None) -> str | None:
        """The replica to park the next watch on: a follower by the machine's hash, skipping the shunned ones;
        the leader (``live``) when the leader does not tell its index or no follower is left; None (the
        replicas in turn) before any heartbeat was answered."""
        if live is None or self.told is None:
            return live
        now = self.clock.monotonic()
        for url, until in list(self.shunned.items()):
            if until <= now:
                del self.shunned[url]
        others = [s for s in servers if s != live and s not in self.shunned]
        return others[self._spot % len(others)] if others else live

    def shun(self, url: str) -> None:
        """Pass ``url`` over for SHUN_S."""
        self.shunned[url] = self.clock.monotonic() + SHUN_S

    async def telling(self) -> None:
        """Return once the leader tells its index (a watch parked on the leader before the first heartbeat
        answer, or while a previous-release leader led, then moves to a follower)."""
        while self.told is None:
            self._told_moved.clear()
            await self._told_moved.wait()

    async def leader_ahead(self, index: int, grace_s: float = FOLLOWER_GRACE_S) -> int:
        """Return the leader's told index once it has been above ``index`` for ``grace_s`` (the watch brought
        nothing that high meanwhile: the caller cancels this when it does)."""
        while True:
            while self.told is None or self.told <= index:
                self._told_moved.clear()
                await self._told_moved.wait()
            await self.clock.sleep(grace_s)
            if self.told is not None and self.told > index:
                return self.told
