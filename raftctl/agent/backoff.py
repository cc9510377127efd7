"""Restart policies and exponential restart backoff (pure: the caller passes the time)."""
from __future__ import annotations

from dataclasses import dataclass

from raftctl.statemachine.records import Restart, seconds
from raftctl.statemachine.spec import DURATIONS

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
    def from_spec(cls, restart: Restart) -> "Backoff":
        """The backoff of a spec's restart settings. A value outside the validator's bounds (a spec stored before
        they were checked) is clamped into them, and max is never below initial."""
        initial = _within(restart.initial, "restart.backoff.initial")
        mx = max(_within(restart.max, "restart.backoff.max"), initial)
        return cls(initial_s=seconds(initial), max_s=seconds(mx), reset_s=seconds(_within(restart.reset, "restart.reset")))

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


def _within(ms: int, bounds: str) -> int:
    lo, hi, _ = DURATIONS[bounds]
    return min(max(ms, lo), hi)
