"""A driver's blocking waits (stop's grace, the exit record) read the driver's injected wait clock
(runtime/base.py WaitClock), so a test passes a grace of 30 s without waiting 30 s."""
from __future__ import annotations

import os
import signal
import sys
import time

from raftctl.agent.runtime.base import POLL_S, SYSTEM_WAIT, ContainerSpec, wait_until
from raftctl.agent.runtime.process import ProcessDriver


class StepClock:
    """Each sleep moves the clock by the time asked and really sleeps ``real`` seconds."""

    def __init__(self, real: float = 0.0) -> None:
        self.t = 100.0
        self.real = real
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.t += seconds
        if self.real:
            time.sleep(self.real)


def test_wait_until_polls_on_its_clock_until_done_or_the_timeout():
    clock = StepClock()
    assert wait_until(lambda: clock.t >= 100.099, 5.0, clock) is True
    assert clock.sleeps == round(0.1 / POLL_S)
    clock = StepClock()
    t0 = time.monotonic()
    assert wait_until(lambda: False, 3600.0, clock) is False        # an hour of the clock, at once
    assert clock.t >= 3700.0 and time.monotonic() - t0 < 5
    assert wait_until(lambda: True, 0.0, clock) is True            # done at the deadline still counts


def test_the_real_wait_clock_is_the_default_of_every_driver(tmp_path):
    assert ProcessDriver(str(tmp_path)).wait_clock is SYSTEM_WAIT


def test_the_process_drivers_grace_runs_on_its_wait_clock(tmp_path):
    clock = StepClock(real=0.001)
    drv = ProcessDriver(str(tmp_path), wait_clock=clock)
    spec = ContainerSpec(id="deaf", job="j", replica=0, image="sha256:" + "0" * 64, rootfs=str(tmp_path / "none"),
                         command=[sys.executable, "-c", "import signal, sys, time\n"
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                  "print('ready', flush=True)\n"
                                  "time.sleep(600)"], log_dir=str(tmp_path / "logs"))
    drv.create(spec)
    drv.start("deaf")
    try:
        deadline = time.monotonic() + 20
        while "ready" not in open(tmp_path / "logs" / "stdout.log").read():
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.02)
        t0, c0 = time.monotonic(), clock.t
        obs = drv.stop("deaf", grace_s=30.0)      # ignores SIGTERM: SIGKILL once 30 s of the clock have passed
        assert obs.state == "exited" and obs.exit_code == 128 + signal.SIGKILL
        assert clock.t - c0 >= 30.0 and time.monotonic() - t0 < 15
    finally:
        drv.remove("deaf")
    assert not os.path.exists(drv.dir("deaf"))
