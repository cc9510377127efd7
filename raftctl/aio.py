"""Small asyncio helpers shared by the control replica and the agent."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


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
