"""An optional trace of each container start's steps, for bench/container_start.py's breakdown (issue 15).

When the agent's environment names a file in ``RAFTCTL_START_TRACE``, the agent appends one JSON line per step
of a start: ``{"p": placement, "step": name, "ms": wall milliseconds}`` (steps: ``assigned`` when the
assignment answer naming it arrived, ``converge`` when the pass that starts it began, ``prepare`` / ``prepared``
around the image root, ``created``, ``started``, ``probe_failed`` and ``probe_ok`` for the health probes up to
the first success, ``report_sent:<state>/<health>`` and ``report_done:<state>/<health>``). Without the variable
every call is a no-op. Times are the agent clock's wall milliseconds, so they line up with the control plane's
``created_at`` / ``healthy_at`` and with the bench's own clock on the same machine.
"""
from __future__ import annotations

import json
import os
from typing import IO

from raftctl.clock import SYSTEM, Clock

TRACE_ENV = "RAFTCTL_START_TRACE"


class StartTrace:
    """Appends steps to ``path`` (line buffered); ``StartTrace(None)`` records nothing."""

    def __init__(self, path: str | None, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self._out: IO[str] | None = open(path, "a", buffering=1) if path else None

    @classmethod
    def from_env(cls, clock: Clock = SYSTEM) -> "StartTrace":
        return cls(os.environ.get(TRACE_ENV) or None, clock)

    @property
    def on(self) -> bool:
        return self._out is not None

    def __call__(self, placement: str, step: str, ms: int | None = None) -> None:
        if self._out is not None:
            self._out.write(json.dumps({"p": placement, "step": step,
                                        "ms": self.clock.now_ms() if ms is None else ms}) + "\n")


OFF = StartTrace(None)
"""The trace that records nothing (the default of every component that takes one)."""
