"""The README's quick start, as a user runs it from the repository root (root and runc).

Its own module: `raftctl up` puts agents at 127.0.0.2-4 with fixed port ranges, so no other
cluster with agents may be running meanwhile (pytest ends a module's clusters before the next).
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import dns.message as dmsg
import dns.query as dquery
import pytest

from tests.agent.conftest import root_runc  # noqa: F401  (the loud skip without root and runc)

from .conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.root
def test_the_readme_quick_start_runs_as_written_with_runc(root_runc, tmp_path):
    """`raftctl up` (runc by default as root), then the README's commands."""
    import signal

    from .test_cli import ROOT, raftctl

    d = tmp_path / "dev"
    up = subprocess.Popen([sys.executable, "-m", "raftctl.cli.main", "up", "--dir", str(d)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (d / "env").exists() and json.loads((d / "cluster.json").read_text())["runtime"],
                   timeout=90, what="raftctl up")
        assert json.loads((d / "cluster.json").read_text())["runtime"] == "runc"
        env = dict(line.replace("export ", "").split("=", 1) for line in (d / "env").read_text().splitlines())
        env = {k: v.strip("'") for k, v in env.items()}
        wait_until(lambda: len(json.loads(raftctl("-o", "json", "machine", "list", env=env).stdout)["machines"]) == 3,
                   timeout=60, what="3 machines")
        raftctl("image", "build", "examples/web", "--name", "web:1", "--base", "host", env=env)
        run = raftctl("job", "run", "examples/web.yaml", env=env).stdout  # follows the rollout, no terminal here
        assert run.splitlines()[-1] == "web v1: rolled out, 3/3 healthy", run
        eps = json.loads(raftctl("-o", "json", "discover", "web", env=env).stdout)["endpoints"]
        assert len(eps) == 3
        for e in eps:
            with urllib.request.urlopen(f"http://{e['address']}:{e['port']}/", timeout=5) as r:
                assert "Hello from a raftctl replica" in r.read().decode()
        # `dig @127.0.0.1 -p 8600 web.service.raftctl SRV` (dig is not installed here: dnspython asks the same)
        port = json.loads((d / "cluster.json").read_text())["processes"][0]["dns"]
        srv = dquery.udp(dmsg.make_query("web.service.raftctl", "SRV"), "127.0.0.1", port=port, timeout=3)
        assert sorted((r.target.to_text(), r.port) for r in srv.answer[0]) == sorted(
            (f"{e['placement']}.web.service.raftctl.", e["port"]) for e in eps)
        wide = raftctl("-o", "wide", "machine", "list", env=env).stdout
        assert wide.splitlines()[0].split()[-1] == "ENDPOINT" and wide.count("http://127.0.0.") == 3
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=120)
    assert up.returncode == 0 and "stopped" in out, out
    for m in ("m1", "m2", "m3"):
        r = subprocess.run(["runc", "--root", str(d / m / "runc" / "runc"), "list", "-q"], capture_output=True,
                           text=True)
        assert r.stdout.strip() == "", f"containers left on {m}: {r.stdout}"
