"""Bridge mode with real runc (issue 16), on two machines made of network namespaces (tests/agent/bridge_hosts.py):
containers on two agents talk by address; a published port answers on the machine address (from the other
machine, the host itself and a container beside it); a container binding another placement's host port gets
nothing from outside; egress none cuts a container off from everything but containers; after an agent killed -9
and restarted the leftovers are swept and the containers adopted; after stop nothing is left: no interface,
route, nft table or namespace (listed and asserted). Everything runs inside a private `unshare --net --mount`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_machines_bridge_mode_end_to_end(root_runc, busybox_store, tmp_path):
    missing = [t for t in ("unshare", "nsenter", "nft", "ip") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing")
    store, digest = busybox_store
    r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", sys.executable, "-m",
                        "tests.agent.bridge_hosts", "scenario", store.root, digest, str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "RAFTCTL_BRIDGE_PRIVATE": "1"})
    assert "BRIDGE-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
    for line in r.stderr.splitlines():      # the retries the scenario needed (pytest -s shows them)
        if line.startswith("retrying"):
            print(line)
