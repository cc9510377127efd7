"""Container runtime drivers behind one interface (base.Driver): runc, process, sim."""
from __future__ import annotations

from typing import Any

from raftctl.agent.runtime.base import ContainerSpec, Driver, Observed, Resources, RuntimeError_, Stats

__all__ = ["ContainerSpec", "Driver", "Observed", "Resources", "RuntimeError_", "Stats", "make_driver",
           "default_runtime"]


def default_runtime() -> str:
    """runc where root and runc exist, else process."""
    from raftctl.agent.runtime.runc import runc_available
    return "runc" if runc_available() else "process"


def make_driver(kind: str, data_dir: str, **kwargs: Any) -> Driver:
    if kind == "runc":
        from raftctl.agent.runtime.runc import RuncDriver
        return RuncDriver(data_dir, **kwargs)
    if kind == "process":
        from raftctl.agent.runtime.process import ProcessDriver
        return ProcessDriver(data_dir, **kwargs)
    if kind == "sim":
        from raftctl.agent.runtime.sim import SimDriver
        return SimDriver(**kwargs)
    raise RuntimeError_(f"runtime {kind!r} is not runc, process or sim")
