"""The one clock of raftctl's async parts (node controllers and the agent), injected rather than read.

Two readings and one wait:

- ``now_ms()``: wall time in integer milliseconds since the epoch. What goes into the state (deadlines,
  ``healthy_at``, samples' times) and what is compared with it.
- ``monotonic()``: seconds from an arbitrary origin that never goes back. What measures intervals inside one
  process (heartbeat TTLs, backoffs, poll deadlines).
- ``await sleep(seconds)``: the wait between a loop's passes.

:data:`SYSTEM` is the real clock (``time.time``, ``time.monotonic``, ``asyncio.sleep``): this module is the one
place that reads them for the code that takes a ``Clock``. :class:`FakeClock` is the test double: time moves
only when a test calls :meth:`FakeClock.advance` or when the code under test sleeps on it (the sleep returns at
once, the clock having moved by the time asked: trio's ``MockClock`` with autojump), so a test drives a deadline,
a cooldown or a TTL past its end without sleeping.

Neutral: it imports nothing of raftctl, so node/, agent/ and the CLI may all import it (tests/unit/test_layering.py).
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, integer milliseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds since an arbitrary origin; never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a cancellation point)."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM: Clock = SystemClock()
"""The clock every component gets unless a test injects another."""


class FakeClock:
    """A clock that moves only when told to (``advance``) or when slept on (``sleep`` moves it and returns after
    one turn of the event loop). Both readings move together. ``sleeps`` records every sleep asked, in order."""

    def __init__(self, wall_ms: int = 1_700_000_000_000, monotonic: float = 1_000.0) -> None:
        if wall_ms < 0 or monotonic < 0:
            raise ValueError("a fake clock starts at a non-negative time")
        self._wall_ms = float(wall_ms)
        self._mono = float(monotonic)
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return int(self._wall_ms)

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self._mono += seconds
        self._wall_ms += seconds * 1000.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
