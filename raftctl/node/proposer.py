"""Batching proposer: many commands per log entry, every submit bounded in time.

Commands queue on the event loop; a flusher packs whatever has queued into one
entry and submits it to pysyncobj with a callback. At most ``max_inflight``
entries are outstanding, so under load batches grow on their own (group
commit) while a lone write goes out at once. pysyncobj calls back on its tick
thread; results cross to the loop with ``call_soon_threadsafe``. A callback can
be lost (DESIGN §11), so every wait is bounded: a timeout or a leader change
means the outcome is unknown, and command ids make retries safe.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from pysyncobj import FAIL_REASON

from raftctl.errors import OutcomeUnknown, Unavailable
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import Result

log = logging.getLogger("raftctl.proposer")


class Proposer:
    def __init__(self, raft: Any, *, max_batch: int = 1024, max_inflight: int = 4, timeout: float = 5.0) -> None:
        self.raft = raft
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.timeout = timeout
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._barrier: asyncio.Future | None = None
        self._inflight: dict[int, tuple["_Slot", list[asyncio.Future]]] = {}
        self.entries = 0
        self.commands = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._flusher(), name="proposer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def propose(self, cmd: c.Command, *, timeout: float | None = None) -> Result:
        """Commit one command and return its result; raises OutcomeUnknown/Unavailable."""
        wire = c.to_wire(cmd)
        if not wire["at"]:
            wire["at"] = int(time.time() * 1000)
        if not wire["id"] and not isinstance(cmd, c.Noop):
            wire["id"] = uuid.uuid4().hex
        fut = self._loop.create_future()
        self._queue.append((wire, fut))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise OutcomeUnknown("the write was proposed but not confirmed in time; it may or may not have "
                                 "been applied (retry with the same request id is safe)") from None

    async def barrier(self, *, timeout: float | None = None) -> int:
        """Pass a no-op through the log; afterwards local state is at least as new as any
        write acknowledged before the call (a deposed leader cannot pass it)."""
        if self._barrier is None or self._barrier.done():
            fut = self._loop.create_future()
            self._barrier = fut
            self._queue.append(({**c.to_wire(c.Noop()), "at": 0}, fut))
            self._wake.set()
        try:
            res = await asyncio.wait_for(asyncio.shield(self._barrier), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise Unavailable("no quorum: the read barrier did not commit in time") from None
        return res.index

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._slots.acquire()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                if self._barrier is not None and any(f is self._barrier for _, f in batch):
                    self._barrier = None  # later barriers must go into a later entry
                futures = [f for _, f in batch]
                data = c.encode_wire_entry([w for w, _ in batch])
                self.entries += 1
                self.commands += len(batch)
                # a slot comes back on the callback or, if pysyncobj loses it, after the timeout
                slot = _Slot(self._slots)
                self._inflight[id(slot)] = (slot, futures)
                slot.on_release = lambda s=slot: self._inflight.pop(id(s), None)
                self._loop.call_later(self.timeout, slot.release)
                try:
                    self.raft.apply_entry(data, callback=self._callback(futures, slot))
                except Exception as exc:  # queue full, destroyed
                    slot.release()
                    self._fail(futures, Unavailable(f"cannot submit to raft: {exc}"))

    def _callback(self, futures: list[asyncio.Future], slot: "_Slot"):
        loop = self._loop

        def on_result(result: Any, err: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._resolve, futures, slot, result, err)
            except RuntimeError:  # the loop is closed: shutting down
                pass
        return on_result

    def _resolve(self, futures: list[asyncio.Future], slot: "_Slot", result: Any, err: Any) -> None:
        slot.release()
        if err != FAIL_REASON.SUCCESS:
            if err in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL, FAIL_REASON.NOT_LEADER):
                exc: Exception = Unavailable(f"no leader to take the write ({_reason(err)}); nothing was applied")
            else:
                exc = OutcomeUnknown(f"raft could not confirm the write ({_reason(err)}); it may or may not "
                                     "have been applied")
            self._fail(futures, exc)
            return
        for fut, res in zip(futures, result):
            if not fut.done():
                fut.set_result(res)

    def leader_changed(self) -> None:
        """The leader we submitted to is gone: entries in flight may never be answered.

        Their outcome is unknown (they may still commit under the new leader); free their
        slots at once so new writes do not queue behind callbacks that will never come.
        """
        for slot, futures in list(self._inflight.values()):
            slot.release()
            self._fail(futures, OutcomeUnknown("the leader changed while the write was in flight; it may or may "
                                               "not have been applied (retry with the same request id is safe)"))

    @staticmethod
    def _fail(futures: list[asyncio.Future], exc: Exception) -> None:
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a barrier nobody awaits must not warn


class _Slot:
    """One in-flight entry's claim on the semaphore, released exactly once."""

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self.sem = sem
        self.done = False
        self.on_release: Any = None

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.sem.release()
            if self.on_release is not None:
                self.on_release()


def _reason(err: Any) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
    return names.get(err, str(err)).lower()
