"""Bridge mode through the whole stack (issue 16), for tests/agent/test_bridge_cluster.py: a real ``raftctl server``
and a real ``raftctl agent --runtime runc`` on each of two machines made of network namespaces.

``python -m tests.agent.bridge_cluster scenario STORE DIGEST TMP`` must run inside a private ``unshare --net
--mount`` (it refuses otherwise). The namespace it starts in is the switch and the control host: a test bridge
``tsw0`` holding 10.77.0.254 (the replica's address), with a veth to each machine ``ha`` (10.77.0.1) and ``hb``
(10.77.0.2), as jepsen-style/hosts.py builds its hosts. Each agent runs under ``nsenter --net`` (its own network
namespace, the run's mount namespace: runc and the cgroup tree as the host has them). Every process it starts
dies with it (``setpriv --pdeathsig KILL``); containers, which outlive their agent by design, are removed on the
way out whatever happened. Traffic goes only to addresses of these namespaces. Prints BRIDGE-CLUSTER-OK when
every check passed, and one line of figures (``figures {...}``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

SWITCH, CONTROL = "tsw0", "10.77.0.254"
HOSTS = {"ha": "10.77.0.1", "hb": "10.77.0.2"}
API, RAFT = f"{CONTROL}:7000", f"{CONTROL}:7001"
PORTS = "31000-31099"
# each replica answers with its own address: a reply names the container that sent it
SERVE = "mkdir -p /tmp/w && echo {text} > /tmp/w/index.html && exec httpd -f -p {port} -h /tmp/w"
WEB = {"name": "web", "image": "bb:1", "base": "scratch", "network": "bridge", "replicas": 2,
       "command": ["sh", "-c", SERVE.format(text="web-$RAFTCTL_ADDRESS", port=8080)],
       "resources": {"cpu": "100m", "memory": "32Mi", "pids": 32},
       "ports": [{"name": "http", "to": 8080, "publish": True}],
       "spread": [{"level": "zone", "mode": "hard"}],
       # a slow start on a loaded machine is not a failure: 20 failed checks (6 s) before a restart
       "health": {"type": "tcp", "port": "http", "interval": "300ms", "timeout": "1s", "failures": 20},
       "update": {"drain_delay": "0s", "min_healthy": "0s"}}
DIE_WITH_ME = ["setpriv", "--pdeathsig", "KILL", "--"]
T0 = time.monotonic()


def note(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.returncode} {r.stderr.strip()}")
    return r


def in_host(host: str, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``argv`` in the host's network namespace only (nsenter: not `ip netns exec`, which remounts /sys)."""
    return sh("nsenter", f"--net=/run/netns/{host}", "--", *argv, check=check, timeout=timeout)


def wait_until(fn: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.2,
               explain: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError, AssertionError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}"
                         + (f"; {explain()}" if explain else ""))


def changes(before: dict[str, list[str]], now: dict[str, list[str]]) -> dict[str, Any]:
    """What differs between two listings: per kind, the lines gone and the lines new (a line twice counts)."""
    from collections import Counter
    out: dict[str, Any] = {}
    for k in before.keys() | now.keys():
        b, n = Counter(before.get(k, [])), Counter(now.get(k, []))
        if b != n:
            out[k] = {"gone": sorted((b - n).elements()), "new": sorted((n - b).elements())}
    return out


def body_of(code: int, out: str) -> str:
    parts = out.replace("\r", "").split("\n\n", 1)
    return parts[1].strip() if code == 0 and len(parts) == 2 else f"<failed {code}: {out.strip()[-200:]}>"


def answered(fetch: Callable[[], str], tries: int = 5) -> str:
    """``fetch()``'s body; a connection that failed (a loaded machine) is tried again, ``tries`` times in all, but
    never an answer: a wrong body is returned as it came."""
    got = fetch()
    for _ in range(tries - 1):
        if not got.startswith("<failed"):
            break
        note(f"retrying after {got!r}")
        time.sleep(0.5)
        got = fetch()
    return got


# -- one host's cleanup (run in its network namespace) ------------------------------------------------------

def cleanup(data_dir: str) -> list[str]:
    """What `raftctl up` does when it stops (devcluster.LocalCluster.stop_containers): remove every container the
    agent of ``data_dir`` left (they outlive it by design), then its routes, table and bridge. The ids removed."""
    from raftctl.agent.runtime import agent_driver
    if not os.path.isdir(os.path.join(data_dir, "runc")):
        return []
    driver = agent_driver("runc", data_dir)
    try:
        ids = driver.list_existing()
        for cid in ids:
            driver.stop(cid, 2.0)
            driver.remove(cid)
        driver.release_network()
        return ids
    finally:
        driver.close()


def half_attach(data_dir: str, id: str, address: str) -> None:
    """What an agent killed -9 between making a container's namespace and its bundle leaves: the namespace, its
    veth on the bridge."""
    from raftctl.agent.runtime import agent_driver
    driver = agent_driver("runc", data_dir)
    driver.bridge_net().attach(id, address)  # type: ignore[attr-defined]
    driver.close()


# -- the cluster ----------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, store: str, digest: str, tmp: str) -> None:
        self.store, self.digest, self.tmp = store, digest, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self.agent_tokens: dict[str, str] = {}

    # -- building --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        for d in ("/run/netns", "/run/raftctl"):
            os.makedirs(d, exist_ok=True)
            sh("mount", "-t", "tmpfs", "tmpfs", d)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", SWITCH, "type", "bridge")
        sh("ip", "addr", "add", f"{CONTROL}/24", "dev", SWITCH)
        sh("ip", "link", "set", SWITCH, "up")
        for h, addr in HOSTS.items():
            sh("ip", "netns", "add", h)
            sh("ip", "link", "add", f"{h}-sw", "type", "veth", "peer", "name", "eth0", "netns", h)
            sh("ip", "link", "set", f"{h}-sw", "master", SWITCH, "up")
            sh("ip", "-n", h, "link", "set", "lo", "up")
            sh("ip", "-n", h, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", h, "link", "set", "eth0", "up")

    def data(self, name: str) -> str:
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        return d

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(os.path.join(self.data(name), "out.log"), "ab")
        self.procs[name] = subprocess.Popen([*DIE_WITH_ME, *argv], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        log.close()

    def start_server(self) -> None:
        from raftctl.node.auth import new_token, write_secret_file
        secret = os.path.join(self.tmp, "secret")
        write_secret_file(secret, new_token())
        self.spawn("n1", [sys.executable, "-m", "raftctl.cli.main", "server", "--id", "n1", "--data-dir",
                          self.data("n1"), "--raft", RAFT, "--api", API, "--secret-file", secret,
                          # an agent killed -9 and restarted is back long before this (at load 13 the restart
                          # took 5 s: a 3 s ttl declared its placements lost and moved them)
                          "--heartbeat-ttl", "30s", "--log-level", "info"])
        path = os.path.join(self.data("n1"), "admin-token")

        def ready() -> bool:
            if self.procs["n1"].poll() is not None:
                raise SystemExit(f"the replica exited: {self.log('n1')}")
            if not self.token and os.path.exists(path):
                with open(path) as f:
                    self.token = f.read().strip()
            return bool(self.token) and bool(self.api("GET", "/v1/status").get("leader"))
        wait_until(ready, "the replica to lead", timeout=60)

    def agent_argv(self, h: str, zone: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{h}", "--", sys.executable, "-m", "raftctl.cli.main", "agent",
                "--id", h, "--data-dir", self.data(h), "--advertise", HOSTS[h], "--runtime", "runc",
                "--server", f"http://{API}", "--heartbeat", "300ms", "--fault-domain",
                f"region=r1,zone={zone},rack={zone}", "--ports", PORTS, "--cpu", "1000m", "--memory", "1Gi",
                "--image-gc-after", "0", "--log-level", "info"]

    def start_agent(self, h: str) -> None:
        if h not in self.agent_tokens:
            self.agent_tokens[h] = self.api("POST", "/v1/tokens", {"role": "agent", "name": f"agent-{h}",
                                                                   "machine": h})["token"]
        self.spawn(h, self.agent_argv(h, "z1" if h == "ha" else "z2"), env={"RAFTCTL_AGENT_TOKEN": self.agent_tokens[h]})

    def stop_proc(self, name: str, sig: int = signal.SIGTERM) -> int:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()

    def log(self, name: str, tail: int = 4000) -> str:
        try:
            with open(os.path.join(self.data(name), "out.log"), errors="replace") as f:
                return f"--- log of {name}\n" + f.read()[-tail:]
        except OSError as exc:
            return f"--- log of {name}: {exc}"

    # -- the API -----------------------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(f"http://{API}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def push_image(self) -> None:
        from raftctl.agent.images import ImageStore
        from raftctl.cli.image import push_and_tag
        from raftctl.client import Client
        push_and_tag(Client([f"http://{API}"], self.token), ImageStore(self.store), "bb:1", self.digest)

    def placements(self, job: str) -> list[dict[str, Any]]:
        try:
            return list(self.api("GET", f"/v1/jobs/{job}/placements")["placements"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def running(self, job: str, n: int, healthy: bool = True) -> list[dict[str, Any]] | None:
        pl = [p for p in self.placements(job) if p["desired"] == "run" and p["state"] == "running"
              and (p["health"] == "healthy" or not healthy)]
        return pl if len(pl) == n else None

    def machines(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.api("GET", "/v1/machines")["machines"]}

    # -- looking at the hosts ------------------------------------------------------------------------------------
    def runc_dir(self, h: str) -> str:
        return os.path.join(self.data(h), "runc")

    def container_pid(self, h: str, id: str) -> int:
        r = sh("runc", "--root", os.path.join(self.runc_dir(h), "runc"), "state", id)
        st = json.loads(r.stdout)
        assert st["status"] == "running", st
        return int(st["pid"])

    def containers(self, h: str) -> list[str]:
        r = sh("runc", "--root", os.path.join(self.runc_dir(h), "runc"), "list", "--format", "json", check=False)
        listed = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() not in ("", "null") else []
        bundles = os.listdir(os.path.join(self.runc_dir(h), "containers")) \
            if os.path.isdir(os.path.join(self.runc_dir(h), "containers")) else []
        return sorted({c["id"] for c in listed} | set(bundles))

    def exec_in(self, h: str, id: str, script: str, timeout: float = 15) -> tuple[int, str]:
        """``sh -c script`` in container ``id`` of host ``h`` (runc exec: the container's own namespaces)."""
        r = sh("runc", "--root", os.path.join(self.runc_dir(h), "runc"), "exec", id, "sh", "-c", script,
               check=False, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def fetch_from_container(self, h: str, id: str, ip: str, port: int) -> str:
        # busybox's static wget crashes in an image without NSS files: plain HTTP/1.0 through nc
        return answered(lambda: body_of(*self.exec_in(
            h, id, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")))

    def fetch_from_host(self, h: str | None, ip: str, port: int) -> str:
        """From host ``h``'s network namespace, or from the switch (None). Only to 10.77.0.0/24 and 10.88.0.0/16
        addresses of this run's namespaces, or loopback."""
        argv = ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}"]

        def once() -> str:
            r = in_host(h, *argv) if h else sh(*argv, check=False)
            return body_of(r.returncode, r.stdout + r.stderr)
        return answered(once)

    def listing(self, h: str) -> dict[str, list[str]]:
        """Every link, route, nft table (with its rules) and namespace of host ``h``, sorted, duplicates kept."""
        links = sorted(line.split(":")[1].strip().split("@")[0]
                       for line in in_host(h, "ip", "-o", "link").stdout.splitlines())
        routes = sorted(in_host(h, "ip", "route").stdout.splitlines())
        tables = sorted(in_host(h, "nft", "list", "tables").stdout.splitlines())
        rules = [line.strip() for line in in_host(h, "nft", "list", "ruleset").stdout.splitlines() if line.strip()]
        return {"links": links, "routes": routes, "tables": tables, "rules": rules,
                "netns": sorted(os.listdir("/run/netns"))}

    def leftovers(self, h: str) -> dict[str, list[str]]:
        """What raftctl may have made in host ``h`` and left: links beside lo and the host's eth0, routes to the
        container pool, raftctl nft tables, container namespaces (every one, not only this host's)."""
        got = self.listing(h)
        return {"links": [x for x in got["links"] if x not in ("lo", "eth0")],
                "routes": [r for r in got["routes"] if r.startswith("10.88.")],
                "tables": [t for t in got["tables"] if "raftctl" in t],
                "netns": [n for n in got["netns"] if n.startswith("raftctl")]}

    def diag(self) -> str:
        out = []
        for h in HOSTS:
            for argv in (["ip", "-o", "addr"], ["ip", "route"], ["nft", "list", "ruleset"]):
                r = in_host(h, *argv)
                out.append(f"--- {h}: {' '.join(argv)}\n{r.stdout}{r.stderr}")
        out.append(f"--- /run/netns: {sorted(os.listdir('/run/netns'))}")
        try:
            out.append(f"--- placements: {json.dumps(self.placements('web'))[-3000:]}")
        except Exception as exc:  # the replica may be what failed
            out.append(f"--- placements: {exc!r}")
        out += [self.log(n) for n in self.procs]
        return "\n".join(out)

    def teardown(self) -> None:
        """Whatever happened: every process this run started stopped, every container the agents left removed."""
        for name in list(self.procs):
            self.stop_proc(name, signal.SIGKILL)
        for h in HOSTS:
            r = in_host(h, sys.executable, "-m", "tests.agent.bridge_cluster", "cleanup", self.data(h), timeout=120)
            if r.returncode != 0:
                print(f"cleanup of {h} failed: {r.stderr[-2000:]}", file=sys.stderr)
            elif r.stdout.strip() not in ("", "[]"):
                print(f"cleanup of {h} removed {r.stdout.strip()}", file=sys.stderr)


# -- the scenario -----------------------------------------------------------------------------------------------

def eq(got: Any, want: Any, what: str = "") -> None:
    assert got == want, f"{what}: got {got!r}, wanted {want!r}"


def scenario(store: str, digest: str, tmp: str) -> None:
    if os.environ.get("RAFTCTL_BRIDGE_PRIVATE") != "1":
        sys.exit("refusing to run outside the private namespace the test makes")
    missing = [t for t in ("nsenter", "setpriv", "nft", "ip", "runc") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {missing}")
    c = Cluster(store, digest, tmp)
    c.setup()
    try:
        figures = _checks(c)
    except BaseException:
        print(c.diag(), file=sys.stderr)
        raise
    finally:
        c.teardown()
    print("figures " + json.dumps(figures))
    print("BRIDGE-CLUSTER-OK")


def _checks(c: Cluster) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    c.start_server()
    for h in HOSTS:
        c.start_agent(h)
    machines = wait_until(lambda: (ms := c.machines()) and all(
        ms.get(h, {}).get("status") == "up" for h in HOSTS) and ms, "both machines up", timeout=60)
    subnets = {h: machines[h]["subnet"] for h in HOSTS}
    note(f"server and agents up; subnets {subnets}")
    assert all(subnets.values()) and len(set(subnets.values())) == 2, subnets
    figures["up_s"] = round(time.monotonic() - T0, 1)

    # a bridge job of 2 replicas, one per machine, its port published
    c.push_image()
    t = time.monotonic()
    c.api("PUT", "/v1/jobs/web", WEB)
    web = wait_until(lambda: c.running("web", 2), "2 healthy replicas of web", timeout=90)
    figures["web_healthy_s"] = round(time.monotonic() - t, 1)
    by_host = {p["machine"]: p for p in web}
    eq(sorted(by_host), sorted(HOSTS), "one replica per machine")
    note(f"web healthy: {[(p['machine'], p['id'], p['address'], p['ports']) for p in web]}")

    # discovery returns the containers' addresses, inside their machines' replicated subnets, and their port
    eps = wait_until(lambda: len(e := c.api("GET", "/v1/discovery/web")["endpoints"]) == 2 and e,
                     "2 endpoints in discovery", timeout=30)
    for e in eps:
        h = e["machine"]
        assert ipaddress.ip_address(e["address"]) in ipaddress.ip_network(subnets[h]), (e, subnets)
        assert e["address"] != HOSTS[h] and e["address"] != str(ipaddress.ip_network(subnets[h])[1]), e
        eq((e["address"], e["port"], e["placement"]), (by_host[h]["address"], 8080, by_host[h]["id"]), "endpoint")
    addr = {h: by_host[h]["address"] for h in HOSTS}
    ids = {h: by_host[h]["id"] for h in HOSTS}
    hport = {h: int(by_host[h]["ports"]["http"]) for h in HOSTS}

    # the agents' host-gw routes: each machine routes the other's subnet via its address
    for h, o in (("ha", "hb"), ("hb", "ha")):
        routes = in_host(h, "ip", "route").stdout
        assert f"{subnets[o]} via {HOSTS[o]}" in routes, (h, routes)

    # container A reaches container B by its discovery address, and B reaches A (across the machines)
    for h, o in (("ha", "hb"), ("hb", "ha")):
        eq(c.fetch_from_container(h, ids[h], addr[o], 8080), f"web-{addr[o]}", f"{h}'s container -> {o}'s")

    # the published port answers on the machine address: from the other machine and from the switch's host
    for h, o in (("ha", "hb"), ("hb", "ha")):
        eq(c.fetch_from_host(o, HOSTS[h], hport[h]), f"web-{addr[h]}", f"{o} -> {h}'s published port")
        eq(c.fetch_from_host(None, HOSTS[h], hport[h]), f"web-{addr[h]}", f"switch -> {h}'s published port")

    # a container of another job on ha binds web's host port there: inside its own namespace only; from outside,
    # the machine's port is still web's
    squat = {**{k: v for k, v in WEB.items() if k != "health"}, "name": "squat", "replicas": 1, "ports": [],
             "spread": [], "command": ["sh", "-c", SERVE.format(text="squatter", port=hport["ha"])],
             "constraints": [{"attr": "id", "op": "==", "value": "ha"}]}
    c.api("PUT", "/v1/jobs/squat", squat)
    sq = wait_until(lambda: c.running("squat", 1, healthy=False), "the squatter running", timeout=60)[0]
    eq(wait_until(lambda: (b := c.fetch_from_container("ha", sq["id"], "127.0.0.1", hport["ha"])) == "squatter" and b,
                  "the squatter serving on its port", timeout=20), "squatter", "the squatter bound the port")
    for _ in range(5):
        eq(c.fetch_from_host("hb", HOSTS["ha"], hport["ha"]), f"web-{addr['ha']}", "hb -> ha's port, squatted")
        eq(c.fetch_from_host(None, HOSTS["ha"], hport["ha"]), f"web-{addr['ha']}", "switch -> ha's port, squatted")
    eps = c.api("GET", "/v1/discovery/web")["endpoints"]
    eq(sorted((e["address"], e["port"]) for e in eps), sorted((addr[h], 8080) for h in HOSTS), "discovery, squatted")

    # kill -9 ha's agent; while it is dead, a leftover as an agent killed half-way through a start leaves (a
    # namespace and a veth on the bridge); restart it: the containers are adopted (same init pids, same
    # placements), the leftover swept, and the links, routes and rules are what they were: none twice
    before, before_hb = c.listing("ha"), c.listing("hb")
    from raftctl.agent.config import read_identity
    from raftctl.agent.netnames import Names
    cluster = (read_identity(c.data("ha")) or {})["cluster"]
    names = Names(cluster, "ha")
    made = sorted([names.bridge, *(names.veths(id)[0] for id in (ids["ha"], sq["id"]))])
    eq(sorted(x for x in before["links"] if x not in ("lo", "eth0")), made, "ha's bridge and veths")
    assert any(f"dport {hport['ha']}" in line for line in before["rules"]), before["rules"]
    pids = {id: c.container_pid("ha", id) for id in (ids["ha"], sq["id"])}
    eq(c.stop_proc("ha", signal.SIGKILL), -signal.SIGKILL, "agent ha killed -9")
    ghost_ip = str(ipaddress.ip_network(subnets["ha"])[200])
    r = in_host("ha", sys.executable, "-m", "tests.agent.bridge_cluster", "half_attach", c.data("ha"), "ghost",
                ghost_ip, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    with_ghost = c.listing("ha")
    new_links = sorted(set(with_ghost["links"]) - set(before["links"]))
    new_ns = sorted(set(with_ghost["netns"]) - set(before["netns"]))
    assert len(new_links) == 1 and len(new_ns) == 1 and new_ns[0].endswith("-ghost"), (new_links, new_ns)
    t = time.monotonic()
    c.start_agent("ha")
    wait_until(lambda: c.listing("ha") == before, "ha's leftover swept", timeout=60,
               explain=lambda: changes(before, c.listing("ha")))
    figures["sweep_after_restart_s"] = round(time.monotonic() - t, 1)
    note(f"agent ha restarted; leftovers {new_links + new_ns} swept in {figures['sweep_after_restart_s']} s")
    # the restarted agent has registered, answered its first assignment (routes and table configured again,
    # the adopted containers converged) and serves as before
    wait_until(lambda: c.machines()["ha"]["status"] == "up", "ha up again", timeout=30)
    wait_until(lambda: c.log("ha", 10**6).count("assignment watch on http://") >= 2, "ha's first assignment", timeout=30)
    again = wait_until(lambda: c.running("web", 2), "web healthy after the restart", timeout=30)
    eq(sorted(p["id"] for p in again), sorted(ids.values()), "web's placements after the restart")
    eq({id: c.container_pid("ha", id) for id in pids}, pids, "containers adopted, not restarted")
    eq(c.containers("ha"), sorted(pids), "ha's containers")
    eq(c.fetch_from_host("hb", HOSTS["ha"], hport["ha"]), f"web-{addr['ha']}", "hb -> ha's port after the restart")
    eq(c.fetch_from_container("hb", ids["hb"], addr["ha"], 8080), f"web-{addr['ha']}", "hb -> ha after the restart")
    eq(c.fetch_from_container("ha", ids["ha"], addr["hb"], 8080), f"web-{addr['hb']}", "ha -> hb after the restart")
    after = c.listing("ha")
    eq(changes(before, after), {}, "ha's links, routes, nft ruleset and namespaces after the restart")
    eq(sum(line.startswith(f"{subnets['hb']} via") for line in after["routes"]), 1, "one route to hb's subnet")
    eq(changes(before_hb, c.listing("hb")), {}, "hb's links, routes, nft ruleset and namespaces")

    # stop the jobs: every container goes, and with the last one its namespace, veth, table and bridge
    t = time.monotonic()
    c.api("DELETE", "/v1/jobs/squat")
    c.api("DELETE", "/v1/jobs/web")
    wait_until(lambda: not c.containers("ha") and not c.containers("hb"), "every container removed", timeout=60)
    wait_until(lambda: all(not (left := c.leftovers(h))["links"] and not left["tables"] and not left["netns"]
                           for h in HOSTS), "bridges, veths, tables and namespaces gone", timeout=30)
    figures["stop_s"] = round(time.monotonic() - t, 1)
    # and the agents: what is left is listed and must be nothing
    for h in HOSTS:
        eq(c.stop_proc(h), 0, f"agent {h} stopped by SIGTERM")
    left = {h: c.leftovers(h) for h in HOSTS}
    note(f"left after the jobs and the agents stopped: {left}")
    for h in HOSTS:
        eq(left[h], {"links": [], "routes": [], "tables": [], "netns": []}, f"left in {h}")
    # nor a cgroup: the machines' scopes /raftctl-<cluster>/<machine> and the cluster's, in every hierarchy
    from raftctl.agent.runtime import cgroups
    scopes = sorted(p for root in cgroups.hierarchies() if os.path.isdir(p := f"{root}/raftctl-{cluster}"))
    eq(scopes, [], "cgroup scopes left")
    figures["total_s"] = round(time.monotonic() - T0, 1)
    return figures


if __name__ == "__main__":
    if sys.argv[1] == "scenario":
        scenario(*sys.argv[2:5])
    elif sys.argv[1] == "cleanup":
        print(json.dumps(cleanup(sys.argv[2])))
    elif sys.argv[1] == "half_attach":
        half_attach(*sys.argv[2:5])
