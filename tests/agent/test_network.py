"""Bridge networking, run only inside a network + mount namespace the test creates."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    from raftctl.agent import network
    run = network.RUN_DIR
    os.makedirs(run, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", run], check=True)   # private: this mount namespace only
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    network.ensure_bridge("10.88.1.1/24")
    network.ensure_bridge("10.88.1.1/24")                    # idempotent
    paths = [network.attach(f"c{i}", f"10.88.1.{i + 2}/24", "10.88.1.1") for i in range(2)]
    def ns(path, *argv):
        return subprocess.run(["nsenter", "--net=" + path, *argv], capture_output=True, text=True)
    out = ns(paths[0], "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "10.88.1.2/24" in out, out
    assert "default via 10.88.1.1" in ns(paths[0], "ip", "route").stdout
    assert "UP" in ns(paths[0], "ip", "-o", "link", "show", "lo").stdout
    assert ns(paths[0], "busybox", "ping", "-c1", "-W2", "10.88.1.1").returncode == 0
    assert ns(paths[0], "busybox", "ping", "-c1", "-W2", "10.88.1.3").returncode == 0   # container to container
    for i in range(2):
        assert network.detach(f"c{i}")
    assert not network.detach("c0")                        # idempotent
    assert os.listdir(run) == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "rv" not in links.replace("raftctl0", ""), links
    print("NETWORK-OK")
""")



def test_bridge_netns_veth_in_a_private_namespace(root_runc, tmp_path):
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("unshare/nsenter missing")
    r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert "NETWORK-OK" in r.stdout, r.stdout + r.stderr
    assert "raftctl0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
