"""A local cluster of control replicas as subprocesses on loopback.

Used by `raftctl up`, the integration tests and the benchmarks. Its layout on
disk: ``DIR/secret`` (0600), ``DIR/cluster.json`` (each process's role, id,
pid, URLs and data dir), ``DIR/env`` (``RAFTCTL_SERVER``/``RAFTCTL_TOKEN``),
and one data dir per replica ``DIR/n1`` … A second start on the same DIR
reuses the same ports and data dirs, so the cluster resumes its state.

With ``dns_port`` (``raftctl up``: 8600, Consul's habit) replica i also answers DNS
(``<service>.service.raftctl``, UDP and TCP, no token) on ``host:dns_port + i``, or on a
free port when that one is taken; ``Proc.dns`` and cluster.json say which.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from raftctl.agent import nft
from raftctl.agent.config import read_identity
from raftctl.agent.netnames import Names
from raftctl.agent.runtime import agent_driver, default_runtime
from raftctl.node.auth import new_token, write_secret_file


# Ports this process has handed out, newest last: a cluster's six addresses are chosen before any is bound,
# so a free port can be drawn twice (1 in ~700 clusters of 3 when drawing at random: a CI run starts ~100).
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4000)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, so an outgoing connection cannot take it
    between now and the moment the replica binds it; never one this process handed out lately."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(10000, 19999)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no free port in 10000-19999")


def dns_port_free(host: str, port: int) -> bool:
    """Both UDP and TCP ``host:port`` can be bound now (DNS needs both)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_dns_port(host: str = "127.0.0.1") -> int:
    for _ in range(200):
        port = free_port(host)
        if dns_port_free(host, port):
            return port
    raise RuntimeError("no port free for both UDP and TCP in 10000-19999")


# Host ports for the agents' containers (network: host). Containers of two dev clusters on one machine bind
# the same wildcard ports, so each running cluster holds one of PORT_SLOTS slots: agent m<i> gets
# AGENT_PORTS_FROM + i*1000 + slot*PORTS_PER_SLOT, PORTS_PER_SLOT ports (slot 0: m1 21000-21199, as the README
# shows). A slot is held by an flock on a file of PORTS_REGISTRY while the cluster runs; a cluster that
# resumes takes its previous slot again when it is free.
AGENT_PORTS_FROM = 20000
PORTS_PER_SLOT = 200
PORT_SLOTS = 5
PORTS_REGISTRY = os.environ.get("RAFTCTL_DEV_PORTS_DIR", os.path.join(tempfile.gettempdir(), "raftctl-dev-ports"))


def claim_port_slot(preferred: int | None, registry: str) -> tuple[int, int | None]:
    """(slot, fd holding its lock); the preferred slot first. With every slot held by a running cluster:
    slot 0 without a lock, and a warning (ports may collide)."""
    os.makedirs(registry, exist_ok=True)
    order = ([preferred] if preferred is not None and 0 <= preferred < PORT_SLOTS else []) + [k for k in range(PORT_SLOTS) if k != preferred]
    for slot in order:
        fd = os.open(os.path.join(registry, f"slot-{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return slot, fd
    print(f"!!! every one of the {PORT_SLOTS} dev-cluster port slots is in use ({registry}): this cluster's "
          "containers may collide with another's host ports !!!", file=sys.stderr)
    return 0, None


def agent_ports(i: int, slot: int) -> str:
    """Host ports of agent m<i> in port slot ``slot``."""
    lo = AGENT_PORTS_FROM + i * 1000 + slot * PORTS_PER_SLOT
    return f"{lo}-{lo + PORTS_PER_SLOT - 1}"


@dataclass
class Proc:
    role: str
    id: str
    data_dir: str
    raft: str = ""
    api: str = ""
    extra_args: list[str] = field(default_factory=list)
    popen: subprocess.Popen | None = None
    tls: bool = False
    dns: int | None = None  # the replica's DNS port (UDP and TCP on the API host), if it serves DNS

    @property
    def url(self) -> str:
        return ("https://" if self.tls else "http://") + self.api

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None


class LocalCluster:
    def __init__(self, directory: str, replicas: int = 3, host: str = "127.0.0.1",
                 log_level: str = "info", agents: int = 0, runtime: str | None = None,
                 agent_args: list[str] | None = None, zones: int = 3, tls_dir: str | None = None,
                 dns_port: int | None = None, agent_env: dict[str, str] | None = None) -> None:
        self.dir = os.path.abspath(directory)
        # tls_dir: serve every API over HTTPS with certificates from `raftctl tls init` (made there if absent)
        self.tls_dir = os.path.abspath(tls_dir) if tls_dir else None
        self.host = host
        self.log_level = log_level
        self.runtime = runtime
        self.agent_args = agent_args or []
        self.agent_env = dict(agent_env or {})   # on top of this process's environment, for the agents only
        self.zones = zones
        self.ports_slot: int | None = None  # the slot of the last run (cluster.json), claimed again on start
        self._slot_fd: int | None = None
        os.makedirs(self.dir, exist_ok=True)
        self.secret_path = os.path.join(self.dir, "secret")
        if not os.path.exists(self.secret_path):
            write_secret_file(self.secret_path, new_token())
        self.procs: list[Proc] = self._load_or_plan(replicas)
        if dns_port is not None:
            for i, p in enumerate(self.servers):
                if p.dns is None:
                    p.dns = dns_port + i if dns_port and dns_port_free(self.host, dns_port + i) else \
                        free_dns_port(self.host)
        if not self.agents:
            self.procs += [Proc(role="agent", id=f"m{i + 1}", data_dir=os.path.join(self.dir, f"m{i + 1}"),
                                api=f"127.0.0.{i + 2}") for i in range(agents)]
        if self.tls_dir:
            from raftctl.tls import init_tls

            init_tls(self.tls_dir, server_ips=["127.0.0.1", self.host], server_names=["localhost"],
                     agents=[f"{p.id}={p.api}" for p in self.agents])
            for p in self.servers:
                p.tls = True

    @property
    def ca(self) -> str | None:
        return os.path.join(self.tls_dir, "ca.crt") if self.tls_dir else None

    def _urlopen(self, req: urllib.request.Request, timeout: float) -> Any:
        ctx = None
        if self.ca:
            from raftctl.tls import client_context

            ctx = client_context(self.ca)
        return urllib.request.urlopen(req, timeout=timeout, context=ctx)

    # -- layout --------------------------------------------------------------
    def _load_or_plan(self, replicas: int) -> list[Proc]:
        path = os.path.join(self.dir, "cluster.json")
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            self.runtime = self.runtime or data.get("runtime")
            self.ports_slot = data.get("ports_slot")
            return [Proc(role=p["role"], id=p["id"], data_dir=p["data_dir"], raft=p.get("raft", ""),
                         api=p.get("api", "").replace("http://", "").replace("https://", ""), dns=p.get("dns"))
                    for p in data["processes"]]
        return [Proc(role="server", id=f"n{i + 1}", data_dir=os.path.join(self.dir, f"n{i + 1}"),
                     raft=f"{self.host}:{free_port(self.host)}", api=f"{self.host}:{free_port(self.host)}")
                for i in range(replicas)]

    @property
    def servers(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "server"]

    @property
    def agents(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "agent"]

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.servers]

    def write_files(self) -> None:
        data = {"dir": self.dir, "processes": [
            {"role": p.role, "id": p.id, "pid": p.pid, "raft": p.raft,
             "api": p.url if p.role == "server" else p.api, "data_dir": p.data_dir,
             **({"dns": p.dns} if p.dns is not None else {})}
            for p in self.procs], "runtime": self.runtime, "ports_slot": self.ports_slot}
        tmp = os.path.join(self.dir, "cluster.json.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, os.path.join(self.dir, "cluster.json"))
        token = self.token()
        env = f"export RAFTCTL_SERVER='{' '.join(self.urls)}'\n"
        if token:
            env += f"export RAFTCTL_TOKEN='{token}'\n"
        if self.ca:
            env += f"export RAFTCTL_CA_CERT='{self.ca}'\n"
        write_secret_file(os.path.join(self.dir, "env"), env.rstrip("\n"))

    def token(self) -> str | None:
        for p in self.servers:
            path = os.path.join(p.data_dir, "admin-token")
            if os.path.exists(path):
                with open(path) as f:
                    return f.read().strip()
        return None

    # -- processes ---------------------------------------------------------
    def server_argv(self, p: Proc) -> list[str]:
        peers = [q.raft for q in self.servers if q is not p]
        argv = [sys.executable, "-m", "raftctl.cli.main", "server", "--id", p.id, "--data-dir", p.data_dir,
                "--raft", p.raft, "--api", p.api, "--secret-file", self.secret_path, "--log-level", self.log_level]
        for peer in peers:
            argv += ["--peer", peer]
        if p.dns is not None:
            argv += ["--dns-port", str(p.dns)]
        if self.tls_dir:
            argv += ["--tls-cert", os.path.join(self.tls_dir, "server.crt"),
                     "--tls-key", os.path.join(self.tls_dir, "server.key"),
                     "--tls-ca", os.path.join(self.tls_dir, "ca.crt")]
        return argv + p.extra_args

    def agent_argv(self, p: Proc) -> list[str]:
        i = int(p.id[1:])
        argv = [sys.executable, "-m", "raftctl.cli.main", "agent", "--id", p.id, "--data-dir", p.data_dir,
                "--advertise", p.api, "--fault-domain", f"region=local,zone=z{(i - 1) % self.zones + 1},rack=r{i}",
                "--ports", agent_ports(i, self._port_slot()), "--cpu", "2000m", "--memory", "2Gi",
                "--log-level", self.log_level]
        for url in self.urls:
            argv += ["--server", url]
        if self.runtime:
            argv += ["--runtime", self.runtime]
        if (self.runtime or default_runtime()) == "process":    # a dev cluster may run unisolated, and says so
            print(f"!!! agent {p.id}: runtime 'process' (runc missing or not root): its jobs run as plain processes "
                  "of this user, NOTHING is isolated (--allow-unisolated) !!!", file=sys.stderr)
            argv += ["--allow-unisolated"]
        if self.tls_dir:
            argv += ["--tls-cert", os.path.join(self.tls_dir, f"agent-{p.id}.crt"),
                     "--tls-key", os.path.join(self.tls_dir, f"agent-{p.id}.key"),
                     "--tls-ca", os.path.join(self.tls_dir, "ca.crt")]
        return argv + self.agent_args + p.extra_args

    def agent_token(self, p: Proc) -> str:
        """The agent's token, created once through the API and kept (0600) in its data dir."""
        path = os.path.join(p.data_dir, "agent-token")
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        body = json.dumps({"role": "agent", "name": f"agent-{p.id}", "machine": p.id}).encode()
        server = self.leader() or self.servers[0]
        req = urllib.request.Request(server.url + "/v1/tokens", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {self.token() or ''}",
                                              "Content-Type": "application/json"})
        with self._urlopen(req, 10) as resp:
            token = json.loads(resp.read())["token"]
        os.makedirs(p.data_dir, exist_ok=True)
        write_secret_file(path, token)
        return token

    def _port_slot(self) -> int:
        if self._slot_fd is None:
            self.ports_slot, self._slot_fd = claim_port_slot(self.ports_slot, PORTS_REGISTRY)
        assert self.ports_slot is not None
        return self.ports_slot

    def start_proc(self, p: Proc) -> None:
        os.makedirs(p.data_dir, exist_ok=True)
        ready = os.path.join(p.data_dir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        env = dict(os.environ)
        if p.role == "agent":
            argv = self.agent_argv(p)
            env.update(self.agent_env)
            env["RAFTCTL_AGENT_TOKEN"] = self.agent_token(p)
        else:
            argv = self.server_argv(p)
        log = open(os.path.join(p.data_dir, f"{p.role}.log"), "ab")
        p.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self, timeout: float = 30.0) -> None:
        for p in self.servers:
            self.start_proc(p)
        self.wait_ready(timeout)
        for p in self.agents:
            self.start_proc(p)
        self.write_files()

    def wait_agents(self, timeout: float = 30.0) -> None:
        """Until every agent's machine is registered and up."""
        deadline = time.monotonic() + timeout
        want = {p.id for p in self.agents}
        while time.monotonic() < deadline:
            try:
                ms = self.get(self.servers[0], "/v1/machines")["machines"]
                if want <= {m["id"] for m in ms if m["status"] == "up"}:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"agents {sorted(want)} not registered after {timeout}s")

    def wait_ready(self, timeout: float = 30.0, procs: list[Proc] | None = None) -> None:
        deadline = time.monotonic() + timeout
        procs = procs or self.servers
        while time.monotonic() < deadline:
            for p in procs:
                if p.popen and p.popen.poll() is not None:
                    raise RuntimeError(f"{p.id} exited with {p.popen.returncode}; see {p.data_dir}/{p.role}.log")
            if all(os.path.exists(os.path.join(p.data_dir, "ready")) for p in procs) and self.leader() is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"cluster in {self.dir} not ready after {timeout}s")

    def kill(self, p: Proc, sig: int = signal.SIGKILL) -> None:
        if p.popen and p.popen.poll() is None:
            p.popen.send_signal(sig)
            p.popen.wait(timeout=30)

    def stop(self, containers: bool = True) -> None:
        """Stop every process; with ``containers``, also the containers the agents leave running."""
        for p in self.agents + self.servers:
            if p.popen and p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p.popen:
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()
        if containers:
            for p in self.agents:
                self.stop_containers(p)
        if self._slot_fd is not None:  # the agents are gone: their port slot is free for another cluster
            os.close(self._slot_fd)
            self._slot_fd = None

    def stop_containers(self, p: Proc) -> None:
        """Containers outlive their agent by design (adoption); a dev cluster cleans them up."""
        runtime = self.runtime or default_runtime()
        if runtime == "sim" or not os.path.isdir(os.path.join(p.data_dir, runtime)):
            return
        driver = agent_driver(runtime, p.data_dir)
        try:
            for cid in driver.list_existing():
                try:
                    driver.stop(cid, 2.0)
                    driver.remove(cid)
                except Exception as exc:
                    print(f"could not stop container {cid} of {p.id}: {exc}", file=sys.stderr)
            driver.release_network()      # routes, nft table and bridge of bridge-mode containers
        finally:
            driver.close()

    def network_leftovers(self) -> list[str]:
        """What bridge mode of this cluster's runc agents still holds on the host (call after :meth:`stop`): each
        agent's bridge (with the veths on it), the namespaces under its prefix, its nftables table and the
        host-gw routes it recorded. Empty when nothing is left; the names are the agents' own (netnames.Names),
        so another cluster's objects are never reported."""
        if (self.runtime or default_runtime()) != "runc":
            return []
        left: list[str] = []
        for p in self.agents:
            ident = read_identity(p.data_dir)
            if not ident:
                continue                    # never registered: it made nothing
            names = Names(ident["cluster"], ident["machine"] or p.id)
            brif = os.path.join("/sys/class/net", names.bridge, "brif")
            if os.path.exists(os.path.join("/sys/class/net", names.bridge)):
                veths = sorted(os.listdir(brif)) if os.path.isdir(brif) else []
                left.append(f"{p.id}: bridge {names.bridge}" + (f" with {', '.join(veths)}" if veths else ""))
            left += [f"{p.id}: netns {names.netns(i)}" for i in names.ids_in_run_dir()]
            if nft.exists(names.table):
                left.append(f"{p.id}: nft table ip {names.table}")
            try:
                with open(os.path.join(p.data_dir, "runc", "routes.json")) as f:
                    routes = json.load(f)
            except (OSError, ValueError):
                routes = {}
            left += [f"{p.id}: route {subnet} via {via}" for subnet, via in sorted(dict(routes).items())]
        return left

    # -- observation ---------------------------------------------------------
    def get(self, p: Proc, path: str, timeout: float = 2.0) -> Any:
        req = urllib.request.Request(p.url + path, headers={"Authorization": f"Bearer {self.token() or ''}"})
        with self._urlopen(req, timeout) as resp:
            return json.loads(resp.read())

    def leader(self) -> Proc | None:
        """The replica that says it leads and that a majority names as leader."""
        votes: dict[str, int] = {}
        for p in self.servers:
            if not p.popen or p.popen.poll() is not None:
                continue
            try:
                st = self.get(p, "/v1/status", timeout=1.0)
            except Exception:
                continue
            if st.get("leader"):
                votes[st["leader"]] = votes.get(st["leader"], 0) + 1
        for raft, n in votes.items():
            if n > len(self.servers) // 2:
                return next((p for p in self.servers if p.raft == raft), None)
        return None


def add_server(cluster: LocalCluster, node_id: str) -> Proc:
    """Plan one more replica (not started, not yet a member): it starts with --join, as every replica added at
    runtime must (a learner until the leader promotes it; no vote until its log makes it a voter)."""
    p = Proc(role="server", id=node_id, data_dir=os.path.join(cluster.dir, node_id),
             raft=f"{cluster.host}:{free_port(cluster.host)}", api=f"{cluster.host}:{free_port(cluster.host)}",
             tls=cluster.tls_dir is not None, extra_args=["--join"])
    cluster.procs.append(p)
    return p
