"""Small asyncio helpers shared by the control replica and the agent, and the event loop both run (uvloop)."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Coroutine, Mapping, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop_from_env(env: Mapping[str, str] | None = None) -> str:
    """``RAFTCTL_EVENT_LOOP`` (``uvloop``, the default, or ``asyncio``: a benchmark's baseline) for `raftctl server`
    and `raftctl agent`; ValueError names the variable."""
    raw = (os.environ if env is None else env).get("RAFTCTL_EVENT_LOOP") or EVENT_LOOPS[0]
    if raw not in EVENT_LOOPS:
        raise ValueError(f"RAFTCTL_EVENT_LOOP: {raw!r} is not one of {', '.join(EVENT_LOOPS)}")
    return raw


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """``asyncio.run(main)`` on uvloop's event loop (``loop``: default ``event_loop_from_env()``). Why: a control
    replica's loop runs beside Raft's tick thread and the scheduler's pass; asyncio's selector loop gives the GIL
    up at each send and receive (and waits a switch interval to get it back while a thread computes, raftctl/gil.py),
    uvloop's reads and writes do not. bench/gil_switch.py (one aiohttp handler beside one computing thread, wrk, 1 ms
    switch interval), two runs: 809 and 1,120 requests/s on asyncio, 2,097 and 2,085 on uvloop (2.6 and 1.9 x), p99
    54 -> 27 ms (session 24; session 22: 1.7-2.1 x). The rest of what was measured: docs/control-plane.md, "The event loop"."""
    if (loop or event_loop_from_env()) == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``loop``'s kind: ``uvloop`` or ``asyncio`` (what ``run`` started; a test's loop is asyncio's)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def unless(work: Awaitable[T], interrupt: Awaitable[Any]) -> "asyncio.Future[T] | None":
    """Run ``work`` until it finishes or ``interrupt`` does first.

    Returns the finished ``work`` future (its ``result()`` or ``exception()`` is the caller's to read), or
    None when ``interrupt`` came first: ``work`` is then cancelled. ``interrupt`` is always cancelled.
    """
    job = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(interrupt)
    try:
        await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not job.done():
            job.cancel()
        elif not job.cancelled():
            job.exception()     # retrieved: a caller cancelled as the work failed never reads it (it is logged)
    return job if job.done() and not job.cancelled() else None


async def first_of(*aws: Awaitable[Any]) -> None:
    """Return when the first of ``aws`` finishes (raising its exception, if it failed); the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
