"""Two machines in network namespaces, one agent's runc driver on each, for tests/agent/test_bridge.py.

``python -m tests.agent.bridge_hosts scenario STORE DIGEST TMP`` must run inside a private ``unshare --net
--mount``: it refuses otherwise. It builds hosts hA (10.77.0.1) and hB (10.77.0.2) joined by a veth pair (as
jepsen-style/hosts.py builds its hosts, without the switch), and drives each host's driver through
``python -m tests.agent.bridge_hosts step JSON`` under ``nsenter --net``: every step is a fresh process, so each
one is an agent restart, and a step may end itself with SIGKILL (an agent killed -9). Traffic goes only to
addresses of these namespaces. Prints BRIDGE-OK when every check passed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

CLUSTER = "0123456789ab"
HOSTS = {"hA": "10.77.0.1", "hB": "10.77.0.2"}
SUBNETS = {"hA": "10.88.0.0/24", "hB": "10.88.1.0/24"}
HTTPD = "mkdir -p /tmp/w && echo {text} > /tmp/w/index.html && exec httpd -f -p {port} -h /tmp/w"


# -- one step on one host (a fresh agent process) ---------------------------------------------------------

def _driver(a: dict[str, Any]) -> Any:
    from raftctl.agent.images import ImageStore
    from raftctl.agent.runtime.runc import RuncDriver
    return RuncDriver(a["data"], ImageStore(a["store"]), cluster=CLUSTER, machine=a["host"])


def step(a: dict[str, Any]) -> Any:
    from raftctl.agent.runtime.base import ContainerSpec, Resources
    drv = _driver(a)
    out: Any = None
    act = a["action"]
    if act == "run":
        spec = ContainerSpec(id=a["id"], job="web", replica=0, image=a["digest"], rootfs=drv.prepare_image(a["digest"]),
                             command=["sh", "-c", a["command"]], log_dir=os.path.join(a["data"], "logs", a["id"]),
                             resources=Resources(cpu=200, memory=32 << 20, pids=32), network="bridge",
                             address=a["address"], egress=a.get("egress", "masquerade"), publish=a.get("publish", []))
        drv.create(spec)
        drv.start(spec.id)
    elif act == "list":
        out = drv.list_existing()
    elif act == "exec":
        out = drv.exec(a["id"], a["argv"], timeout=10)
    elif act == "configure":
        drv.configure_network(a["network"])
    elif act == "remove":
        drv.stop(a["id"], 2.0)
        drv.remove(a["id"])
    elif act == "half_attach":       # killed between making a container's namespace and its bundle
        drv.bridge_net().attach(a["id"], a["address"])
    elif act == "release":
        drv.bridge_net().release()
    if a.get("kill9"):
        os.kill(os.getpid(), signal.SIGKILL)
    drv.close()
    return out


# -- the scenario (the orchestrator, in the private namespace) ----------------------------------------------

def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.returncode} {r.stderr.strip()}")
    return r


class Hosts:
    def __init__(self, store: str, digest: str, tmp: str) -> None:
        self.store, self.digest, self.tmp = store, digest, tmp

    def setup(self) -> None:
        for d in ("/run/netns", "/run/raftctl"):
            os.makedirs(d, exist_ok=True)
            sh("mount", "-t", "tmpfs", "tmpfs", d)
        for h in HOSTS:
            sh("ip", "netns", "add", h)
            sh("ip", "-n", h, "link", "set", "lo", "up")
        sh("ip", "link", "add", "va", "netns", "hA", "type", "veth", "peer", "vb", "netns", "hB")
        for h, dev in (("hA", "va"), ("hB", "vb")):
            sh("ip", "-n", h, "addr", "add", HOSTS[h] + "/24", "dev", dev)
            sh("ip", "-n", h, "link", "set", dev, "up")

    def step(self, host: str, action: str, check: bool = True, **kw: Any) -> Any:
        a = {"host": host, "action": action, "data": os.path.join(self.tmp, host), "store": self.store,
             "digest": self.digest, **kw}
        r = subprocess.run(["nsenter", "--net=/run/netns/" + host, "--", sys.executable, "-m",
                            "tests.agent.bridge_hosts", "step", json.dumps(a)], capture_output=True, text=True,
                           timeout=120)
        if kw.get("kill9"):
            assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
            return None
        if check and r.returncode != 0:
            raise AssertionError(f"{host} {action}: {r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None

    def in_host(self, host: str, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", host, *argv, check=check, timeout=timeout)

    def wget(self, host: str, url: str) -> str:
        # only to addresses of these namespaces (10.77.0.0/24, 10.88.0.0/16, 127.0.0.1 of the host namespace)
        ip, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        r = self.in_host(host, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}")
        body = r.stdout.replace("\r", "").split("\n\n", 1)
        return body[1].strip() if r.returncode == 0 and len(body) == 2 else \
            f"<failed {r.returncode}: {r.stderr.strip()[:80]}>"

    def from_container(self, host: str, id: str, url: str) -> str:
        # busybox's static wget crashes in an image without NSS files: plain HTTP/1.0 through nc
        hostport = url.split("//", 1)[1].split("/", 1)[0]
        ip, port = hostport.split(":")
        code, out = self.step(host, "exec", id=id, argv=[
            "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"])
        body = out.replace("\r", "").split("\n\n", 1)
        return body[1].strip() if code == 0 and len(body) == 2 else f"<failed {code}: {out.strip()[-300:]}>"

    def diag(self) -> str:
        out = []
        for h in HOSTS:
            for argv in (["ip", "-o", "addr"], ["ip", "route"], ["nft", "list", "ruleset"],
                         ["sysctl", "net.ipv4.ip_forward"], ["ip", "-br", "link"], ["ip", "neigh"]):
                r = self.in_host(h, *argv)
                out.append(f"--- {h}: {' '.join(argv)}\n{r.stdout}{r.stderr}")
        for n in os.listdir("/run/netns"):
            r = sh("ip", "-n", n, "-o", "addr", check=False)
            r2 = sh("ip", "-n", n, "route", check=False)
            r3 = sh("ip", "-n", n, "neigh", check=False)
            out.append(f"--- netns {n}\n{r.stdout}{r.stderr}{r2.stdout}{r3.stdout}")
        return "\n".join(out)

    def leftovers(self, host: str) -> dict[str, Any]:
        """Everything raftctl could have left in a host: links beside lo and the host's own veth, routes to
        container subnets, nft tables, namespaces mounted for containers."""
        links = sorted(line.split(":")[1].strip().split("@")[0]
                       for line in self.in_host(host, "ip", "-o", "link").stdout.splitlines())
        routes = [r for r in self.in_host(host, "ip", "route").stdout.splitlines() if r.startswith("10.88.")]
        tables = [t for t in self.in_host(host, "nft", "list", "tables").stdout.splitlines() if "raftctl" in t]
        ns = [n for n in os.listdir("/run/netns") if n.startswith("raftctl")]
        return {"links": [x for x in links if x not in ("lo", "va", "vb")], "routes": routes, "tables": tables,
                "netns": ns}


def eq(got: Any, want: Any) -> None:
    assert got == want, f"got {got!r}, wanted {want!r}"


def wait_answer(fn: Any, want: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        print(f"retrying after {got!r} (wanted {want!r})", file=sys.stderr)
        time.sleep(0.2)
        got = fn()
    return str(got)


def scenario(store: str, digest: str, tmp: str) -> None:
    if os.environ.get("RAFTCTL_BRIDGE_PRIVATE") != "1":
        sys.exit("refusing to run outside the private namespace the test makes")
    hosts = Hosts(store, digest, tmp)
    hosts.setup()
    try:
        _checks(hosts)
    except BaseException:
        print(hosts.diag(), file=sys.stderr)
        _remove_all(hosts)
        raise
    print("BRIDGE-OK")


def _remove_all(hosts: Hosts) -> None:
    """After a failed check: remove every container the hosts still hold (their processes would outlive the
    private namespace the test ran in)."""
    for h in HOSTS:
        try:
            for id in hosts.step(h, "list", check=False) or []:
                hosts.step(h, "remove", check=False, id=id)
        except Exception as exc:  # report, and go on with the other host
            print(f"cleanup of {h} failed: {exc}", file=sys.stderr)


def _checks(hosts: Hosts) -> None:
    # a1 serves on 8080 and publishes it as host port 31000; b1 serves on hB
    hosts.step("hA", "run", id="a1", address="10.88.0.2", publish=[[31000, 8080]],
               command=HTTPD.format(text="hello-a1", port=8080))
    hosts.step("hB", "run", id="b1", address="10.88.1.2", command=HTTPD.format(text="hello-b1", port=8080))
    for h, other in (("hA", "hB"), ("hB", "hA")):
        hosts.step(h, "configure", network={"subnet": SUBNETS[h], "peers": [
            {"machine": other, "address": HOSTS[other], "subnet": SUBNETS[other]},
            # a peer at one of this host's own addresses (agents sharing a host, as `raftctl up`'s): no route
            {"machine": "beside", "address": "127.0.0.5", "subnet": "10.88.9.0/24"}]})
    routes = hosts.in_host("hA", "ip", "route").stdout
    assert "10.88.1.0/24 via 10.77.0.2" in routes and "10.88.9.0" not in routes, routes
    # containers on two machines talk by address (host-gw routes)
    got = wait_answer(lambda: hosts.from_container("hB", "b1", "http://10.88.0.2:8080/"), "hello-a1")
    assert got == "hello-a1", got
    eq(hosts.from_container("hA", "a1", "http://10.88.1.2:8080/"), "hello-b1")
    # the published port answers on the machine address, from the other host and from the host itself
    eq(hosts.wget("hB", "http://10.77.0.1:31000/"), "hello-a1")
    eq(hosts.wget("hA", "http://10.77.0.1:31000/"), "hello-a1")
    eq(hosts.wget("hA", "http://127.0.0.1:31000/"), "hello-a1")
    # a container binding another placement's host port binds it in its own namespace only: from outside,
    # the machine's port 31000 is still a1's
    hosts.step("hA", "run", id="a2", address="10.88.0.3", command=HTTPD.format(text="squatter", port=31000))
    assert hosts.from_container("hA", "a2", "http://127.0.0.1:31000/") == "squatter"    # it did bind
    for _ in range(5):
        eq(hosts.wget("hB", "http://10.77.0.1:31000/"), "hello-a1")
    # a container beside a1 reaches the published port too (hairpin)
    eq(hosts.from_container("hA", "a2", "http://10.77.0.1:31000/"), "hello-a1")
    # egress: a1 reaches the other machine's address; a container with egress none does not, but still
    # reaches containers
    www = os.path.join(hosts.tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("host-b\n")
    srv = subprocess.Popen(["ip", "netns", "exec", "hB", "busybox", "httpd", "-f", "-p", "10.77.0.2:9000",
                            "-h", www], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eq(wait_answer(lambda: hosts.wget("hB", "http://10.77.0.2:9000/"), "host-b"), "host-b")
        hosts.step("hA", "run", id="a3", address="10.88.0.4", egress="none", command="exec sleep 300")
        # not retried: a3's veth joining the bridge must not cut a1 off (it did in ~1 run of 6 while the bridge took
        # its ports' lowest MAC: a1's gateway entry still named a2's veth; network.ensure_bridge)
        eq(hosts.from_container("hA", "a1", "http://10.77.0.2:9000/"), "host-b")
        assert hosts.from_container("hA", "a3", "http://10.77.0.2:9000/").startswith("<failed")
        eq(hosts.from_container("hA", "a3", "http://10.88.1.2:8080/"), "hello-b1")
    finally:
        srv.kill()
        srv.wait()
    # the agent killed -9 in the middle of making a container's namespace, then restarted: the leftover is
    # swept; the running containers are adopted with their network untouched
    hosts.step("hA", "half_attach", id="a9", address="10.88.0.9", kill9=True)
    assert any(n.endswith("-a9") for n in os.listdir("/run/netns"))
    assert sorted(hosts.step("hA", "list")) == ["a1", "a2", "a3"]
    assert not any(n.endswith("-a9") for n in os.listdir("/run/netns"))
    eq(hosts.wget("hB", "http://10.77.0.1:31000/"), "hello-a1")
    # a stopped container takes its namespace, veth and rules with it
    hosts.step("hA", "remove", id="a1")
    assert hosts.wget("hB", "http://10.77.0.1:31000/").startswith("<failed")
    table = hosts.in_host("hA", "nft", "list", "ruleset").stdout
    assert "31000" not in table and '"a1"' not in table and '"a3"' in table, table
    # the rest stopped, and the machines leave each other: nothing is left in either host
    for h, ids in (("hA", ["a2", "a3"]), ("hB", ["b1"])):
        for id in ids:
            hosts.step(h, "remove", id=id)
        hosts.step(h, "configure", network={"subnet": SUBNETS[h], "peers": []})
    for h in HOSTS:
        left = hosts.leftovers(h)
        assert left == {"links": [], "routes": [], "tables": [], "netns": []}, (h, left)


if __name__ == "__main__":
    if sys.argv[1] == "step":
        print(json.dumps(step(json.loads(sys.argv[2]))))
    elif sys.argv[1] == "scenario":
        scenario(*sys.argv[2:5])
