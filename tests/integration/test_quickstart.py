"""The README's quick start, as a user runs it from the repository root, in a private network namespace.

`raftctl up` and every command after it run inside one `unshare --net --mount` made by the test (tmpfs on
/run/netns and /run/raftctl, only `lo`, brought up): the bridges, veths, namespaces, nft tables and routes of
bridge mode never touch the host's network, and all traffic goes to loopback or to the container subnets of
that namespace. With runc the three agents register as runc machines, each gets its own /24 and the sample
service (examples/web.yaml, network: bridge, its port published) runs in namespaces of its own; with the
process runtime the same sample runs on the machine network. The README's `curl` lines are run as written.
After Ctrl-C the namespace holds nothing but `lo` again (links, addresses, routes, nft tables, namespaces
listed and asserted), no container is left in runc and no cgroup of the cluster remains.
"""
from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.conftest import root_runc  # noqa: F401  (the loud skip without root and runc)

from .conftest import wait_until

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = "Hello from a raftctl replica"
# the namespace's own /run/netns and /run/raftctl: `ip netns` bind mounts and cluster locks stay inside it
SETUP = ("set -e; mkdir -p /run/netns /run/raftctl; mount -t tmpfs tmpfs /run/netns; "
         "mount -t tmpfs tmpfs /run/raftctl; ip link set lo up; echo ready; exec sleep 3600")


def readme_block() -> list[str]:
    """The commands of the README's quick-start block that runs after `raftctl up` (the one with `curl`)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        if "\ncurl " in "\n" + block:
            return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    raise AssertionError("no quick-start block with a curl line in README.md")


class Namespace:
    """A private network + mount namespace held open by a `sleep` the test started; commands run in it by
    nsenter."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", SETUP],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        assert line == "ready", (line, self.holder.stderr.read() if self.holder.poll() is not None else "")

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "--net", "--mount", f"--wd={ROOT}", "--", *argv]

    def run(self, *argv: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env={**os.environ, **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r

    def raftctl(self, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "raftctl.cli.main", *args, env=env, check=check, timeout=120)

    def curl(self, url: str) -> str:
        return self.run("curl", "-sS", "--max-time", "5", url, check=False).stdout

    def network(self) -> dict[str, list[str]]:
        """Everything in the namespace's network: links, IPv4 addresses, routes (every table), nft tables, the
        namespaces `ip netns` knows."""
        def lines(*argv: str) -> list[str]:
            return sorted(x for x in self.run(*argv).stdout.splitlines() if x.strip())
        links = sorted(x.split(":")[1].strip().split("@")[0] for x in lines("ip", "-o", "link"))
        return {"links": links, "addresses": [x.split()[3] for x in lines("ip", "-o", "-4", "addr")],
                "routes": [r for r in lines("ip", "-4", "route", "show", "table", "all")   # but lo's own
                           if not re.match(r"(local|broadcast) 127\.[0-9.]+(/8)? dev lo table local", r)],
                "nft": lines("nft", "list", "tables"), "netns": lines("ip", "netns", "list")}

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.communicate(timeout=30)


@pytest.fixture
def netns():
    missing = [t for t in ("unshare", "nsenter", "nft", "ip", "curl") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"!!! {', '.join(missing)} missing: the quick start's private namespace cannot be made !!!")
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()


@pytest.mark.root
@pytest.mark.parametrize("runtime", ["runc", "process"])
def test_the_readme_quick_start_runs_as_written(root_runc, netns, tmp_path, runtime):
    """`raftctl up` (runc by default as root; `--runtime process` the fallback), then the README's commands."""
    import dns.message as dmsg

    # what a replica answers: the image's index.html; the process runtime uses no image (it says so at start), so
    # http.server lists the placement's own directory there
    hello = HELLO if runtime == "runc" else "Directory listing for /"
    d = tmp_path / "dev"
    before = netns.network()
    assert before == {"links": ["lo"], "addresses": ["127.0.0.1/8"], "routes": [], "nft": [], "netns": []}, before
    # a port-slot registry of the namespace's own: its ports are private, so it takes slot 0 (21000 on m1)
    up_env = {**os.environ, "RAFTCTL_DEV_PORTS_DIR": str(tmp_path / "ports")}
    args = ["up", "--dir", str(d)] + (["--runtime", "process"] if runtime == "process" else [])
    up = subprocess.Popen(netns.argv(sys.executable, "-m", "raftctl.cli.main", *args), cwd=ROOT, env=up_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    during: dict[str, list[str]] = {}
    try:
        wait_until(lambda: (d / "env").exists() and json.loads((d / "cluster.json").read_text())["runtime"],
                   timeout=90, what="raftctl up")
        assert json.loads((d / "cluster.json").read_text())["runtime"] == runtime
        env = dict(line.replace("export ", "").split("=", 1) for line in (d / "env").read_text().splitlines())
        env = {k: v.strip("'") for k, v in env.items()}
        machines = wait_until(lambda: (ms := json.loads(netns.raftctl("-o", "json", "machine", "list",
                                                                       env=env).stdout)["machines"])
                              and len(ms) == 3 and all(m["state"] != "down" for m in ms) and ms,
                              timeout=60, what="3 machines")
        subnets = {m["id"]: m.get("subnet") for m in machines}
        if runtime == "runc":            # a /24 each, from the pool, none shared
            assert all(s and ipaddress.ip_network(s).subnet_of(ipaddress.ip_network("10.88.0.0/16"))
                       and s.endswith("/24") for s in subnets.values()) and len(set(subnets.values())) == 3, subnets
        else:                            # process machines take none
            assert not any(subnets.values()), subnets

        block = readme_block()
        curls = [c for c in block if c.startswith("curl ")]
        assert curls, block
        for cmd in block:
            if cmd.startswith("raftctl image build"):
                netns.raftctl(*cmd.split()[1:], env=env)
            elif cmd.startswith("raftctl job run"):    # follows the rollout (plain lines: no terminal here)
                run = netns.raftctl(*cmd.split()[1:], env=env).stdout
                assert run.splitlines()[-1] == "web v1: rolled out, 3/3 healthy", run
                break
        eps = json.loads(netns.raftctl("-o", "json", "discover", "web", env=env).stdout)["endpoints"]
        assert len(eps) == 3 and len({e["machine"] for e in eps}) == 3, eps
        for e in eps:                    # discover's address: the container's own (runc), the machine's (process)
            if runtime == "runc":
                assert ipaddress.ip_address(e["address"]) in ipaddress.ip_network(subnets[e["machine"]]), e
            else:
                assert e["address"] == {"m1": "127.0.0.2", "m2": "127.0.0.3", "m3": "127.0.0.4"}[e["machine"]], e
            assert hello in netns.curl(f"http://{e['address']}:{e['port']}/"), e
        for cmd in curls:                # the README's curl lines, as written
            out = netns.run(*cmd.split(), check=False)
            assert hello in out.stdout, (cmd, out.stdout[-500:], out.stderr[-500:], eps)
        # the published port of each replica on its machine's address (the allocated host port)
        jobs = json.loads(netns.raftctl("-o", "json", "job", "status", "web", env=env).stdout)
        published = [(p["address"] if runtime == "process" else machine_addr(p["machine"]), p["ports"]["http"])
                     for p in placements_of(jobs)]
        assert len(published) == 3, jobs
        for addr, port in published:
            assert hello in netns.curl(f"http://{addr}:{port}/"), (addr, port)
        # `dig @127.0.0.1 -p 8600 web.service.raftctl SRV` (dig is not installed here: dnspython asks the same)
        port = json.loads((d / "cluster.json").read_text())["processes"][0]["dns"]
        q = dmsg.make_query("web.service.raftctl", "SRV").to_wire().hex()
        ans = netns.run(sys.executable, "-c", "import dns.message as m, dns.query as q, sys; "
                        f"r = q.udp(m.from_wire(bytes.fromhex('{q}')), '127.0.0.1', port={port}, timeout=3); "
                        "print(r.to_wire().hex())").stdout.strip()
        srv = dmsg.from_wire(bytes.fromhex(ans))
        assert sorted((r.target.to_text(), r.port) for r in srv.answer[0]) == sorted(
            (f"{e['placement']}.web.service.raftctl.", e["port"]) for e in eps)
        wide = netns.raftctl("-o", "wide", "machine", "list", env=env).stdout
        assert wide.splitlines()[0].split()[-1] == "ENDPOINT" and wide.count("http://127.0.0.") == 3
        during = netns.network()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()
            out, _ = up.communicate()
        # what Ctrl-C left, listed before anything else touches it ...
        after = netns.network()
        containers = {m: runc_list(d, m) for m in ("m1", "m2", "m3")} if runtime == "runc" else {}
        if any(containers.values()) or after != before:
            # ... then removed, so a failed run leaves no container running once its namespace is gone
            netns.run(sys.executable, "-c", "import sys; from raftctl.devcluster import LocalCluster; "
                      "c = LocalCluster(sys.argv[1]); [c.stop_containers(p) for p in c.agents]", str(d), check=False)
    assert up.returncode == 0 and "stopped" in out, out
    if runtime == "runc":
        # it was there: three bridges with a veth each, three container namespaces, three tables (published ports)
        bridges = [x for x in during["links"] if x.startswith("r") and not x.startswith("rv")]
        assert len(bridges) == 3 and len([x for x in during["links"] if x.startswith("rv")]) == 3, during
        assert len(during["netns"]) == 3 and len([t for t in during["nft"] if "raftctl_" in t]) == 3, during
        assert sum(1 for r in during["routes"] if r.startswith("10.88.")) >= 3, during
    else:
        assert "warning: runtime 'process' makes NO network namespaces" in out, out
        assert during["links"] == ["lo"] and during["nft"] == [] and during["netns"] == [], during
    # ... and after Ctrl-C nothing of it is left in the namespace, in runc or in the cgroup tree
    assert after == before, (after, out[-2000:])
    assert not any(containers.values()), containers
    if runtime == "runc":
        cluster = json.loads((d / "m1" / "identity.json").read_text())["cluster"]
        cgroups = glob.glob(f"/sys/fs/cgroup/raftctl-{cluster}") + glob.glob(f"/sys/fs/cgroup/*/raftctl-{cluster}")
        assert cgroups == [], cgroups


def runc_list(d: Path, machine: str) -> list[str]:
    r = subprocess.run(["runc", "--root", str(d / machine / "runc" / "runc"), "list", "-q"], capture_output=True,
                       text=True, timeout=30)
    return r.stdout.split()


def machine_addr(machine: str) -> str:
    return {"m1": "127.0.0.2", "m2": "127.0.0.3", "m3": "127.0.0.4"}[machine]


def placements_of(status: dict) -> list[dict]:
    return [p for p in status["placements"] if p["desired"] == "run" and p["health"] == "healthy"]
