"""Restart policies and exponential restart backoff (pure: the caller passes the time)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICIES = ("always", "on-failure", "never")


def should_restart(policy: str, exit_code: int | None, oom_killed: bool = False, unhealthy: bool = False) -> bool:
    """always: every exit; on-failure: non-zero, unknown code, OOM kill or failed liveness; never: no."""
    if policy == "always":
        return True
    if policy == "on-failure":
        return oom_killed or unhealthy or exit_code is None or exit_code != 0
    if policy == "never":
        return False
    raise ValueError(f"restart policy {policy!r} is not one of {', '.join(POLICIES)}")


@dataclass
class Backoff:
    """Delay before restart number n is ``min(max, initial × factor^n)``; a run that lasted
    ``reset_s`` or longer counts as stable and resets n to 0."""
    initial_s: float = 0.1
    max_s: float = 10.0
    reset_s: float = 60.0
    factor: float = 2.0
    failures: int = 0
    started_at: float | None = None

    @classmethod
    def from_spec(cls, restart: dict[str, Any]) -> "Backoff":
        initial = restart.get("initial_ms", 100) / 1000
        mx = restart.get("max_ms", 10_000) / 1000
        return cls(initial_s=initial, max_s=mx, reset_s=restart.get("reset_ms", max(60_000, int(mx * 6000))) / 1000)

    def on_start(self, now: float) -> None:
        self.started_at = now

    def on_exit(self, now: float) -> float:
        """The container just stopped: return how long to wait before starting it again."""
        if self.started_at is not None and now - self.started_at >= self.reset_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * self.factor ** self.failures)
        if delay < self.max_s:   # at the cap the count stops: factor ** 1100 would overflow a float
            self.failures += 1
        self.started_at = None
        return delay

    def stable(self, now: float) -> bool:
        return self.started_at is not None and now - self.started_at >= self.reset_s
