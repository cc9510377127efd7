"""Container runtime drivers behind one interface (base.Driver): runc, process, sim."""
from __future__ import annotations

import os
from typing import Any

from raftctl.agent.config import read_identity
from raftctl.agent.runtime.base import ContainerSpec, Driver, Observed, Resources, RuntimeError_, Stats

__all__ = ["ContainerSpec", "Driver", "Observed", "Resources", "RuntimeError_", "Stats", "agent_driver",
           "default_runtime", "make_driver"]


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


def agent_driver(runtime: str, data_dir: str, private_paths: tuple[str, ...] = (),
                 cluster: str | None = None, machine: str | None = None) -> Driver:
    """The driver of the agent whose data dir is ``data_dir`` (its containers live under data_dir/<runtime>).
    ``private_paths``: the agent's secrets (token file, TLS key...) that no container may see (runc).
    ``cluster``/``machine``: the names runc containers' cgroups carry (default: the data dir's identity.json)."""
    if runtime == "sim":
        return make_driver("sim", data_dir)
    if runtime == "runc":
        if cluster is None:
            kept = read_identity(data_dir)
            if kept:
                cluster, machine = kept["cluster"], machine or kept["machine"]
        return make_driver(runtime, os.path.join(data_dir, runtime), cluster=cluster, machine=machine,
                           private_paths=tuple(os.path.abspath(p) for p in (data_dir, *private_paths) if p))
    return make_driver(runtime, os.path.join(data_dir, runtime))
