"""Bridge mode through the whole stack (issue 16), real runc: a `raftctl server` and a `raftctl agent --runtime
runc` on each of two machines made of network namespaces (tests/agent/bridge_cluster.py), all inside a private
`unshare --net --mount`. A bridge job of two replicas spread over the machines, its port published: discovery
returns the containers' addresses, inside their machines' replicated subnets; each container reaches the other
by that address; the published port answers on the machine address from the other machine and from the switch;
a container of another job binding that host port binds it in its own namespace only (from outside the port is
still the publisher's); an agent killed -9 and restarted adopts its containers (same init pids), sweeps what a
half-made start left (a namespace and a veth) and leaves links, routes and nft rules as they were (none twice);
after the jobs and the agents stop, no interface, route, nft table or namespace raftctl made is left in either
machine (listed and asserted)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bridge_job_on_two_runc_agents_end_to_end(root_runc, busybox_store, tmp_path):
    missing = [t for t in ("unshare", "nsenter", "setpriv", "nft", "ip") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing")
    store, digest = busybox_store
    r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "--fork", "--kill-child",
                        sys.executable, "-m", "tests.agent.bridge_cluster", "scenario", store.root, digest,
                        str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "RAFTCTL_BRIDGE_PRIVATE": "1"})
    assert "BRIDGE-CLUSTER-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-12000:]
    for line in r.stdout.splitlines() + r.stderr.splitlines():   # phases and figures (pytest -s shows them)
        if line.startswith(("figures", "[")):
            print(line)
