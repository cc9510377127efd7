"""The agents' containers as the run sees them, under either runtime the agents run (run.py --runtime).

Ground truth for the fencing checker (which containers run), the kill-containers nemesis, the end of a run (nothing
may outlive it), and the leftover checks of bridge mode (issue 16): a container network namespace, veth, bridge,
route or nftables table that no container of the agent accounts for.

    python containers.py clean AGENT_DATA_DIR    inside a runc agent's host (nsenter --net, the run's mounts):
                                                 stop and remove every container of the agent, then its network
                                                 (bridge, host-gw routes, nftables table); prints JSON
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RUNC_TIMEOUT_S = 30.0
_drivers: dict[str, Any] = {}  # one process driver per agent dir, not one per sample


def runc_root(agent_dir: str) -> str:
    """Where the agent's runc driver keeps runc's state (agent data dir / runc / runc: see RuncDriver)."""
    return os.path.join(agent_dir, "runc", "runc")


def runc_list(agent_dir: str) -> list[dict[str, Any]]:
    """`runc list` of the agent's runc root (read-only: runc reads its state files and checks each init pid)."""
    root = runc_root(agent_dir)
    if not os.path.isdir(root):
        return []
    r = subprocess.run(["runc", "--root", root, "list", "--format", "json"], capture_output=True, text=True,
                       timeout=RUNC_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"runc list in {root} failed ({r.returncode}): {r.stderr.strip()}")
    return list(json.loads(r.stdout or "null") or [])


def running(runtime: str, agent_dir: str) -> dict[str, int]:
    """Container id -> pid of its init, for every container of the agent that runs now."""
    if runtime == "runc":
        return {c["id"]: int(c["pid"]) for c in runc_list(agent_dir) if c.get("status") == "running" and c.get("pid")}
    from raftctl.agent.runtime import make_driver

    d = os.path.join(agent_dir, "process")
    if not os.path.isdir(d):
        return {}
    driver = _drivers.get(d)
    if driver is None:
        driver = _drivers[d] = make_driver("process", d)
    out = {}
    for cid in driver.list_existing():
        st = driver.status(cid)
        if st.state == "running" and st.pid:
            out[cid] = st.pid
    return out


def kill_running(runtime: str, agent_dir: str) -> list[int]:
    """kill -9 every running container of the agent: its process group (process), its init (runc: the init of a
    pid namespace, so every process of the container dies with it). Returns the pids killed."""
    pids = list(running(runtime, agent_dir).values())
    for pid in pids:
        try:
            if runtime == "runc":
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def kill_process_shims(agent_dir: str) -> None:
    """The end of a process-runtime run: every container's process group and shim, whatever its recorded state."""
    root = os.path.join(agent_dir, "process", "processes")
    if not os.path.isdir(root):
        return
    for cid in os.listdir(root):
        for name in ("init.pid", "shim.pid"):
            try:
                with open(os.path.join(root, cid, name)) as f:
                    pid = int(f.read().split()[0])
                os.killpg(pid, signal.SIGKILL) if name == "init.pid" else os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


def clean(agent_dir: str) -> dict[str, Any]:
    """Inside the agent's host: the agent's own runc driver stops and removes each of its containers (their
    namespaces, veths and table entries go with them), then releases the machine's network."""
    from raftctl.agent.runtime import agent_driver

    drv: Any = agent_driver("runc", agent_dir)
    removed, failed = [], {}
    try:
        for id in drv.list_existing():
            try:
                drv.stop(id, 0.0)  # SIGKILL: the run is over, nothing to drain
                drv.remove(id)
                removed.append(id)
            except Exception as exc:  # go on with the others; the leftover check reports what stays
                failed[id] = repr(exc)
        drv.release_network()
    finally:
        drv.close()
    return {"removed": removed, "failed": failed}


def force_remove(agent_dir: str) -> list[str]:
    """Last resort after `clean` failed: runc delete --force of whatever runc still knows (processes must not
    outlive the run; the network objects die with the run's namespaces)."""
    ids = [c["id"] for c in runc_list(agent_dir)]
    for id in ids:
        subprocess.run(["runc", "--root", runc_root(agent_dir), "delete", "--force", id], capture_output=True,
                       timeout=RUNC_TIMEOUT_S)
    return ids


def unaccounted(agent_dir: str, netns: list[str], links: list[str], tables: list[str]) -> dict[str, list[str]]:
    """What a runc agent's host holds that none of the agent's containers accounts for: a namespace (under
    /run/netns, named for this agent) or a veth of a container runc no longer knows, or a link that is neither
    the machine bridge, a container's veth, lo nor the host's eth0. `netns`: every name under /run/netns;
    `links`: the host's link names; `tables`: its nft tables (one table of the agent's is expected)."""
    from raftctl.agent.config import read_identity
    from raftctl.agent.netnames import Names

    ident = read_identity(agent_dir)
    if ident is None:
        return {"links": [x for x in links if x not in ("lo", "eth0")], "netns": [], "tables": tables}
    names = Names(ident["cluster"], ident["machine"])
    known = {c["id"] for c in runc_list(agent_dir)}
    cdir = os.path.join(agent_dir, "runc", "containers")
    if os.path.isdir(cdir):
        known.update(os.listdir(cdir))
    mine = [n[len(names.netns_prefix):] for n in netns if n.startswith(names.netns_prefix)]
    expected_links = {"lo", "eth0", names.bridge, *(names.veths(id)[0] for id in known)}
    return {"netns": sorted(names.netns_prefix + id for id in mine if id not in known),
            "links": sorted(x for x in links if x not in expected_links),
            "tables": sorted(t for t in tables if names.table not in t.split())}


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "clean":
        raise SystemExit(__doc__)
    print(json.dumps(clean(argv[1])))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(sys.argv[1:])
