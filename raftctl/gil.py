"""The GIL's switch interval in raftctl's long-running processes (a control replica, a host agent).

Each runs an asyncio event loop beside threads that compute: Raft's tick thread and the scheduler's pass in a
replica, the runtime calls on worker threads in an agent. The loop gives the GIL up at every system call (each
send and receive of a request) and then waits to get it back; while another thread is computing, CPython hands
it back only when that thread's switch interval runs out, 5 ms by default (the "convoy effect"). So a loop that
answers many small requests answers at most one per interval per syscall while a pass runs: in the 10,000-machine
bed's failover window a third of the leader's event-loop samples (py-spy, session 18) were waits for the GIL after
a send. ``SWITCH_INTERVAL_S`` (1 ms) is what these processes run with; ``RAFTCTL_SWITCH_INTERVAL_MS`` overrides it
(a benchmark's comparison). ``bench/gil_switch.py`` (one aiohttp handler beside one thread computing, wrk with 32
connections): 276 requests/s at 5 ms, 1,025 (3.7 x) at 1 ms, 1,594 at 0.5 ms, p99 229 -> 53 -> 31 ms, while the
computing thread kept 85 % and 76 % of its speed; 1 ms is the middle of that trade.
"""
from __future__ import annotations

import sys
from typing import Mapping

from raftctl.tuning import millis_from_env

__all__ = ["SWITCH_INTERVAL_S", "switch_interval_from_env", "tune_switch_interval"]

SWITCH_INTERVAL_S = 0.001


def switch_interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """``RAFTCTL_SWITCH_INTERVAL_MS`` (milliseconds, 0.05 to 100) in seconds, or :data:`SWITCH_INTERVAL_S`;
    ValueError names the variable."""
    return millis_from_env("RAFTCTL_SWITCH_INTERVAL_MS", SWITCH_INTERVAL_S, 0.05, 100, env)


def tune_switch_interval(seconds: float) -> None:
    """Process-wide: only in a process of raftctl's own (a replica, an agent), never in a library user's."""
    sys.setswitchinterval(seconds)
