"""raftctl.aio.unless: a work that failed in the moment its caller was cancelled has its exception retrieved
(a 10,000-machine bed logged "Task exception was never retrieved" for the agents' assignment watches when they
were stopped)."""
from __future__ import annotations

import asyncio
import gc

import pytest

from raftctl.aio import unless


async def test_a_failed_work_is_retrieved_when_the_caller_is_cancelled_in_the_same_moment():
    seen: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: seen.append(ctx))
    outer: asyncio.Task | None = None

    async def work() -> None:
        assert outer is not None
        outer.cancel()                      # the caller is cancelled as the work fails
        raise RuntimeError("no control replica answered")

    outer = asyncio.create_task(unless(work(), asyncio.Event().wait()))
    with pytest.raises(asyncio.CancelledError):
        await outer
    outer = None
    gc.collect()
    await asyncio.sleep(0)
    assert not [c for c in seen if "never retrieved" in str(c.get("message"))], seen


async def test_the_work_or_none():
    async def value() -> int:
        return 7
    job = await unless(value(), asyncio.Event().wait())
    assert job is not None and job.result() == 7
    assert await unless(asyncio.Event().wait(), asyncio.sleep(0)) is None
