"""The process runtime says NOTHING IS ISOLATED once per process, not once per driver built."""
from __future__ import annotations

import logging
import threading

from raftctl.agent.runtime import make_driver, process
from raftctl.agent.runtime.process import ProcessDriver


def test_building_the_process_driver_twice_warns_once(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setattr(process, "_warned", threading.Lock(), raising=False)  # as in a fresh process
    caplog.set_level(logging.WARNING, logger="raftctl.agent.process")
    ProcessDriver(str(tmp_path / "a"))
    ProcessDriver(str(tmp_path / "a"))
    make_driver("process", str(tmp_path / "b"))
    warnings = [r for r in caplog.records if "NOTHING IS ISOLATED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert capfd.readouterr().err.count("NOTHING IS ISOLATED") <= 1  # no second copy printed beside the log
