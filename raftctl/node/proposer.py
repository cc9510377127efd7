"""Batching proposer: many commands per log entry, every submit bounded in time.

Commands queue on the event loop; a flusher packs whatever has queued into one
entry and submits it to pysyncobj with a callback. At most ``max_inflight``
entries are outstanding, so under load batches grow on their own (group
commit) while a lone write goes out at once. pysyncobj calls back on its tick
thread; results cross to the loop with ``call_soon_threadsafe``. A callback can
be lost (DESIGN §11), so every wait is bounded: a timeout or a leader change
means the outcome is unknown, and command ids make retries safe.

Nothing one caller sends can stop the write path: each command is encoded and
decoded back on its caller's task before it joins a batch, so a command the log
cannot carry (a lone surrogate, nesting too deep) is refused to that caller
alone with a 400. The flusher is supervised: an exception fails only the batch
it happened in (logged), and the loop goes on; a flusher task that dies anyway
is started again.

A command goes to raft only while raft names a leader: a write waits up to
``leader_wait_s`` for an election and is then refused as not applied (503). Handed
to a replica that knows no leader, pysyncobj would hold it for as long as the
replica stays cut off and apply it, stale, whenever it hears a leader again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from pysyncobj import FAIL_REASON

from raftctl.clock import SYSTEM, Clock
from raftctl.errors import OutcomeUnknown, RaftctlError, Unavailable, ValidationError
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import Result

log = logging.getLogger("raftctl.proposer")

LEADER_POLL_S = 0.02  # how often a write waiting for an election looks again


class RefusedByRaft(Unavailable):
    """Raft refused the entry (no leader, its queue full, or the leader it went to is not leading: a leader
    handing over refuses what followers forward): nothing was applied (503 unavailable)."""


class Proposer:
    def __init__(self, raft: Any, *, max_batch: int = 1024, max_inflight: int = 4, timeout: float = 5.0,
                 leader_wait_s: float = 3.0, clock: Clock = SYSTEM) -> None:
        self.raft = raft
        self.clock = clock  # stamps commands' ``at``, times the wait for a leader and the flusher's restart pause
        self.leader_wait_s = leader_wait_s  # how long a write waits for an election before it is refused
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.timeout = timeout
        self._queue: list[tuple[bytes, asyncio.Future]] = []  # (encoded command, its caller's future)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._barrier: asyncio.Future | None = None
        self._inflight: dict[int, tuple["_Slot", list[asyncio.Future], str | None]] = {}  # + the leader handed to
        self._stopping = False
        self.entries = 0
        self.commands = 0
        self.refused = 0          # commands refused before batching (cannot round-trip)
        self.failed_batches = 0   # batches failed by an exception in the flusher
        self.restarts = 0         # flusher restarts

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="proposer")
        self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task) -> None:
        if self._stopping or task.cancelled() or self._loop.is_closed():
            return
        self.restarts += 1
        log.error("proposer: the flusher task died (%r); starting it again", task.exception())
        self.start()

    async def stop(self) -> None:
        self._stopping = True
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
            wire["at"] = self.clock.now_ms()
        # No id is invented for a command that has none: only a caller that may retry (an API request
        # with X-Request-Id, the bootstrap) has one, and the dedup table keeps room for those.
        try:
            item = round_trip(wire)
        except ValidationError:
            self.refused += 1
            raise
        if not await self._wait_for_leader(min(self.leader_wait_s, timeout or self.timeout)):
            raise self._no_leader()
        fut = self._loop.create_future()
        self._queue.append((item, fut))
        self._wake.set()
        # One timer per command that fails its own future (the future is this caller's alone): wait_for +
        # shield cost two more futures and a task switch per write on the event loop (issue 15).
        timer = self._loop.call_later(timeout or self.timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _knows_leader(self) -> bool:
        """Whether raft names a leader now."""
        return self.raft.leader_address() is not None

    async def _wait_for_leader(self, bound: float) -> bool:
        """Wait up to ``bound`` seconds (an election) until raft names a leader."""
        deadline = self.clock.monotonic() + bound
        while not self._knows_leader():
            if self.clock.monotonic() >= deadline:
                return False
            await self.clock.sleep(LEADER_POLL_S)
        return True

    def _no_leader(self, waited: bool = True) -> Unavailable:
        known = f"has known no leader for {self.leader_wait_s:g} s" if waited else "lost its leader"
        return Unavailable(f"this replica {known} (cut off from the others?); the command was not proposed, "
                           "nothing was applied (retry on another replica)")

    async def barrier(self, *, timeout: float | None = None) -> int:
        """Pass a no-op through the log; afterwards local state is at least as new as any
        write acknowledged before the call (a deposed leader cannot pass it)."""
        if self._barrier is None or self._barrier.done():
            fut = self._loop.create_future()
            self._barrier = fut
            self._queue.append((round_trip({**c.to_wire(c.Noop()), "at": 0}), fut))
            self._wake.set()
        try:
            res = await asyncio.wait_for(asyncio.shield(self._barrier), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise Unavailable("no quorum: the read barrier did not commit in time") from None
        return res.index

    async def _supervise(self) -> None:
        while True:
            try:
                await self._flusher()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                log.exception("proposer: the flusher failed; starting it again")
                await self.clock.sleep(0.01)

    async def _flusher(self) -> None:
        while True:
            if not self._queue:  # a restarted flusher first takes what queued while it was down
                await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._slots.acquire()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                if self._barrier is not None and any(f is self._barrier for _, f in batch):
                    self._barrier = None  # later barriers must go into a later entry
                futures = [f for _, f in batch]
                if not self._knows_leader():
                    # Never hand raft a command while it knows no leader: pysyncobj queues it (commandsWaitLeader)
                    # for as long as the replica is cut off and applies it whenever it hears a leader again (agents'
                    # reports answered "not applied" were applied 25-35 s late at a heal: jepsen-style finding 9).
                    self._slots.release()
                    self._fail(futures, self._no_leader(waited=False))
                    continue
                # a slot comes back on the callback or, if pysyncobj loses it, after the timeout
                slot = _Slot(self._slots)
                try:
                    self._submit([item for item, _ in batch], futures, slot)
                except Exception as exc:
                    slot.release()
                    self.failed_batches += 1
                    log.exception("proposer: a batch of %d commands failed before it reached raft", len(batch))
                    self._fail(futures, RaftctlError(f"internal error in the write path ({type(exc).__name__}); "
                                                     "nothing was applied", code="internal", http_status=500))

    def _submit(self, items: list[bytes], futures: list[asyncio.Future], slot: "_Slot") -> None:
        data = c.join_entry(items)
        self.entries += 1
        self.commands += len(items)
        # the leader this replica knows as it hands the entry over (itself when it leads): leader_changed()
        # fails only entries handed to a leader other than the new one
        self._inflight[id(slot)] = (slot, futures, self.raft.leader_address())
        slot.on_release = lambda s=slot: self._inflight.pop(id(s), None)
        self._loop.call_later(self.timeout, slot.release)
        try:
            self.raft.apply_entry(data, callback=self._callback(futures, slot))
        except Exception as exc:  # queue full, destroyed, or any bug below us: this batch only
            slot.release()
            self.failed_batches += 1
            log.warning("proposer: raft refused a batch of %d commands: %r", len(items), exc)
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
        handed = self._inflight.get(id(slot))
        slot.release()
        try:
            if err != FAIL_REASON.SUCCESS:
                if err in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL, FAIL_REASON.NOT_LEADER):
                    exc: Unavailable = RefusedByRaft(f"no leader to take the write ({_reason(err)}); nothing was "
                                                     "applied")
                else:
                    exc = OutcomeUnknown(f"raft could not confirm the write ({_reason(err)}); it may or may not "
                                         "have been applied")
                exc.handed_to = handed[2] if handed is not None else None
                self._fail(futures, exc)
                return
            if isinstance(result, list) and len(result) == len(futures):
                for fut, res in zip(futures, result):
                    if not fut.done():
                        fut.set_result(res)
                return
            # An entry rejected as a whole (one Result for many commands): every command of it shares
            # that rejection, so none is left waiting for an answer that will not come.
            log.error("proposer: an entry of %d commands came back with %r", len(futures), result)
            if isinstance(result, list) and len(result) == 1 and isinstance(result[0], Result) and not result[0].ok:
                for fut in futures:
                    if not fut.done():
                        fut.set_result(result[0])
            else:
                self._fail(futures, OutcomeUnknown("raft returned no result for this write; it may or may not "
                                                   "have been applied"))
        except Exception as exc:
            log.exception("proposer: resolving a batch failed")
            self._fail(futures, OutcomeUnknown(f"the write's result was lost ({type(exc).__name__}); it may or "
                                               "may not have been applied"))

    def leader_changed(self, leader: str | None = None) -> None:
        """The leader moved to ``leader`` (its Raft address; None: none known): entries handed to another
        leader may never be answered.

        Their outcome is unknown (they may still commit under the new leader); free their slots at once so
        new writes do not queue behind callbacks that will never come. Entries handed to ``leader`` itself
        stay: a replica that has just become leader proposed them to itself in the moments before it noticed
        (failing them made clients retry writes that were committing normally).

        Nor are entries handed to the leader raft names now: ``leader`` is what Leadership._step read from the
        status the tick thread cached, which can trail raft by an election (CI: a write proposed again once
        waited out an election, was handed to the leader that won it, and was then failed by a step that saw
        the election's "no leader" late; with no leader known at its start, it was answered 503).
        """
        now = self.raft.leader_address()
        for slot, futures, to in list(self._inflight.values()):
            if to is not None and to in (leader, now):
                continue
            slot.release()
            exc = OutcomeUnknown("the leader changed while the write was in flight; it may or may not have been "
                                 "applied (retry with the same request id is safe)")
            exc.handed_to = to
            self._fail(futures, exc)

    @staticmethod
    def _fail(futures: list[asyncio.Future], exc: Exception) -> None:
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a barrier nobody awaits must not warn


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(OutcomeUnknown("the write was proposed but not confirmed in time; it may or may not "
                                         "have been applied (retry with the same request id is safe)"))


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


MAX_DEPTH = 390  # nesting a command may reach inside an entry (cbor2 refuses to decode 400 levels)


def round_trip(wire: dict[str, Any]) -> bytes:
    """Encode one wire command and decode it back exactly as apply will; the encoded item, or a
    :class:`ValidationError` naming the field that the log cannot carry."""
    try:
        item = c.encode_command(wire)
        if c.flat(wire):
            # leaves only (a scale, a delete, a report...): what encoded decodes back equal, so what is left to
            # check is what from_wire checks, on the map itself (tests/unit/test_proposer.py: same verdicts).
            # A scale's check: 9.1 -> 6.2-6.3 us (best of 7 x 50,000, two runs, session 25)
            c.from_wire(wire)
        else:
            decodes_back(item)
    except c.DecodeError as exc:
        field, why = _culprit(wire)
        raise ValidationError(f"the command cannot be stored: {why or exc.message}",
                              field=field or exc.field) from None
    except Exception as exc:
        field, why = _culprit(wire)
        raise ValidationError(f"the command cannot be stored: {why or f'{type(exc).__name__}: {exc}'}",
                              field=field) from None
    return item


def decodes_back(item: bytes) -> None:
    """Decode one encoded command as apply will (in an entry of its own); DecodeError if apply would refuse it."""
    items = c.decode_entry(c.join_entry([item]))
    if len(items) != 1:
        raise c.DecodeError("corrupt_entry", "the command did not decode back to one command")
    c.from_wire(items[0])


def _culprit(wire: dict[str, Any]) -> tuple[str | None, str | None]:
    """The dotted path of the first value the log cannot hold, and why (None, None if not found)."""
    stack: list[tuple[Any, str, int]] = [(v, k, 3) for k, v in reversed(list(wire.items()))]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path.split(".")[0], f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            if not _utf8(value):
                return path, "a string holds a lone surrogate (not valid Unicode)"
        elif isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                if isinstance(k, str) and not _utf8(k):
                    return path, "a key holds a lone surrogate (not valid Unicode)"
                stack.append((v, f"{path}.{k}", depth + 1))
        elif isinstance(value, (list, tuple)):
            for i, v in reversed(list(enumerate(value))):
                stack.append((v, f"{path}.{i}", depth + 1))
    return None, None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reason(err: Any) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
    return names.get(err, str(err)).lower()
