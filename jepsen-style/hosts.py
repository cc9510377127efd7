"""Test hosts: one network namespace per host, joined through a bridge in a
"switch" namespace, all inside a private `unshare --net --mount` made by the run.

    n1..n5  control replicas   10.77.0.11-15
    a1..a3  agents             10.77.0.21-23
    c1      client / observer  10.77.0.31

Nothing here touches the host's network: `reexec_private()` re-executes the run
inside a fresh network + mount namespace (with /run on a private tmpfs, so even
`ip netns` bookkeeping vanishes with the run), and `Network.setup()` refuses to
run anywhere else. Partitions live in one nftables table in the switch namespace
(see nemesis.py).

    python hosts.py selftest [n1 n2 n3]   build hosts, isolate the first, verify, heal, verify
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, NoReturn, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
SUBNET = "10.77.0"
OCTETS = {"n1": 11, "n2": 12, "n3": 13, "n4": 14, "n5": 15, "a1": 21, "a2": 22, "a3": 23, "c1": 31}
SWITCH = "sw"
BRIDGE = "br0"
PROBE_PORT = 7999
PROBE_TIMEOUT_S = 2.0  # a TCP connect between hosts; 0.5 s failed whole sources at load 27 (a starved prober)
PROBE_START_S = 60.0  # how long a probe process may take to start and answer beyond that (a loaded machine)
MARKER = "RAFTCTL_JEPSEN_PRIVATE_NETNS"
CONTAINER_NETS = "10.88."  # raftctl's default container subnet pool, 10.88.0.0/16 (machine subnets are /24s in it)


# Every process spawned in a host starts under `setpriv --pdeathsig KILL`: SIGKILL when the run dies, so a
# crashed or killed run leaves no replica, agent or probe behind (setpriv and `ip netns exec` exec, and the
# setting survives exec). It replaced a preexec_fn calling prctl through ctypes: Python code between fork and
# exec in a process with threads (the container sampler, the nemesis) can deadlock on a lock another thread
# held at the fork, and a run hung for minutes before its first fault with a forked child in futex_wait.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) for a preexec_fn: only where setpriv is missing (see DIE_WITH_PARENT)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def addr_of(name: str) -> str:
    return f"{SUBNET}.{OCTETS[name]}"


def missing_tools() -> list[str]:
    return [t for t in ("unshare", "ip", "nft", "nsenter") if shutil.which(t) is None]


def _netns_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


def in_private_netns() -> bool:
    """True when this process was re-executed by `reexec_private` and its network namespace
    differs from the one it was started in (recorded in the marker variable; /proc/1/ns may
    not be readable, so init's namespace is not consulted)."""
    origin = os.environ.get(MARKER, "")
    here = _netns_inode()
    return origin.isdigit() and here is not None and here != int(origin)


def private_command(argv: Sequence[str]) -> list[str]:
    """The command that runs `argv` (a python script and its arguments) in a fresh net+mount namespace."""
    return ["unshare", "--net", "--mount", "--fork", "--propagation", "private", "--kill-child",
            sys.executable, *argv]


def reexec_private(argv: Sequence[str]) -> NoReturn:
    """Replace this process by itself inside a fresh network and mount namespace."""
    if os.environ.get(MARKER):
        raise RuntimeError("already re-executed once, yet not in a private network namespace")
    env = dict(os.environ, **{MARKER: str(_netns_inode())})
    cmd = private_command(argv)
    os.execvpe(cmd[0], cmd, env)


def _sh(argv: Sequence[str], input: str | None = None, check: bool = True) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def container_netns() -> list[str]:
    """Container network namespaces raftctl bind-mounted under /run/netns (the run's private tmpfs)."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith("raftctl"))
    except FileNotFoundError:
        return []


@dataclass
class Host:
    name: str
    addr: str

    @property
    def ns(self) -> str:
        return self.name


class Network:
    """The switch and the test hosts. Use inside the private namespace only."""

    def __init__(self, names: Iterable[str]) -> None:
        self.hosts = {n: Host(n, addr_of(n)) for n in names}
        self.probes: dict[str, subprocess.Popen[bytes]] = {}
        self.ready = False

    # -- building -------------------------------------------------------------------
    def setup(self) -> None:
        if not in_private_netns():
            raise RuntimeError("refusing to build test hosts outside a private network namespace "
                               "(run through hosts.reexec_private)")
        # /run on a tmpfs private to this mount namespace: `ip netns add` writes nothing on the host.
        _sh(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
        os.makedirs("/run/netns", exist_ok=True)
        _sh(["ip", "link", "set", "lo", "up"])
        _sh(["ip", "netns", "add", SWITCH])
        _sh(["ip", "-n", SWITCH, "link", "set", "lo", "up"])
        _sh(["ip", "-n", SWITCH, "link", "add", BRIDGE, "type", "bridge"])
        _sh(["ip", "-n", SWITCH, "link", "set", BRIDGE, "up"])
        for h in self.hosts.values():
            port = f"{h.name}-sw"
            _sh(["ip", "netns", "add", h.ns])
            _sh(["ip", "link", "add", port, "netns", SWITCH, "type", "veth", "peer", "name", "eth0", "netns", h.ns])
            _sh(["ip", "-n", SWITCH, "link", "set", port, "master", BRIDGE, "up"])
            _sh(["ip", "-n", h.ns, "link", "set", "lo", "up"])
            _sh(["ip", "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0"])
            _sh(["ip", "-n", h.ns, "link", "set", "eth0", "up"])
        from nemesis import install_table
        install_table()
        self.ready = True

    def teardown(self) -> None:
        """Stop probes and delete the namespaces (all of it also vanishes when the run exits)."""
        for p in self.probes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.probes.clear()
        for ns in [*self.hosts, SWITCH]:
            _sh(["ip", "netns", "del", ns], check=False)
        self.ready = False

    # -- running things in a host -----------------------------------------------------
    def command(self, host: str, argv: Sequence[str], share_mounts: bool = False) -> list[str]:
        """`ip netns exec` gives the command a mount namespace of its own (a slave copy, /sys remounted);
        `share_mounts` enters only the host's network namespace instead (nsenter), for a runc agent: the
        namespaces it bind-mounts for its containers under /run/netns must stay visible to the run (its leftover
        checks) and to the same agent restarted after a kill -9, which would otherwise find them gone."""
        if share_mounts:
            return ["nsenter", f"--net=/run/netns/{self.hosts[host].ns}", "--", *argv]
        return ["ip", "netns", "exec", self.hosts[host].ns, *argv]

    def spawn(self, host: str, argv: Sequence[str], share_mounts: bool = False, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a process inside a host (setpriv and `ip netns exec` or nsenter exec, so the pid is the process's
        own); it dies with the run."""
        if shutil.which("setpriv"):
            return subprocess.Popen([*DIE_WITH_PARENT, *self.command(host, argv, share_mounts)], **kw)
        return subprocess.Popen(self.command(host, argv, share_mounts), preexec_fn=die_with_parent, **kw)

    def run(self, host: str, argv: Sequence[str], timeout: float = 30,
            share_mounts: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(host, argv, share_mounts), capture_output=True, text=True, timeout=timeout)

    # -- what raftctl left in the hosts -----------------------------------------------------
    def leftovers(self, host: str) -> dict[str, list[str]]:
        """Every network object raftctl can make in a host (bridge mode, issue 16): links beside lo and the
        host's own eth0 (bridges, veths), routes to container subnets (10.88.0.0/16 by default), nftables tables
        named raftctl*, and the containers' namespaces bind-mounted under /run/netns (shared by every host of
        the run, so listed by name: every raftctl-* there)."""
        return {"links": [x for x in self.links(host) if x not in ("lo", "eth0")],
                "routes": [r for r in self._sh_in(host, ["ip", "route"]).splitlines() if r.startswith(CONTAINER_NETS)],
                "tables": [t for t in self._sh_in(host, ["nft", "list", "tables"]).splitlines() if "raftctl" in t],
                "netns": container_netns()}

    def links(self, host: str | None) -> list[str]:
        """Link names in a host (None: the run's own namespace, outside every host)."""
        out = self._sh_in(host, ["ip", "-o", "link"])
        return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)

    def _sh_in(self, host: str | None, argv: list[str]) -> str:
        if host is not None:
            argv = self.command(host, argv, share_mounts=True)
        return _sh(argv, check=False)

    # -- probes -----------------------------------------------------------------------
    def start_probes(self) -> None:
        for h in self.hosts.values():
            p = self.spawn(h.name, [sys.executable, os.path.join(HERE, "probe.py"), "listen", h.addr, str(PROBE_PORT)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.probes[h.name] = p
        for name, p in self.probes.items():
            line = p.stdout.readline() if p.stdout else b""
            if b"listening" not in line:
                raise RuntimeError(f"probe listener on {name} did not start")

    def reachability(self, sources: Iterable[str] | None = None,
                     timeout: float = PROBE_TIMEOUT_S) -> dict[tuple[str, str], bool]:
        """Can a TCP connection from each source to each other host's probe complete?
        (Both directions must pass for a handshake, so a one-way block shows on both.)"""
        names = list(self.hosts)
        procs = {}
        for src in sources or names:
            targets = [f"{self.hosts[d].addr}:{PROBE_PORT}" for d in names if d != src]
            procs[src] = self.spawn(src, [sys.executable, os.path.join(HERE, "probe.py"), "connect", str(timeout), *targets],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        by_addr = {h.addr: h.name for h in self.hosts.values()}
        out: dict[tuple[str, str], bool] = {}
        for src, p in procs.items():
            # the probes connect in parallel within `timeout`; the rest is starting a Python process per host,
            # which took over 10 s with the machine's load at 25 (a run stopped with exit 2 on that)
            stdout, stderr = p.communicate(timeout=timeout + PROBE_START_S)
            if p.returncode != 0:
                raise RuntimeError(f"probe from {src} failed: {stderr.decode().strip()}")
            for target, ok in json.loads(stdout).items():
                out[(src, by_addr[target.rpartition(":")[0]])] = ok
        return out


def selftest(names: list[str]) -> dict[str, Any]:
    """Build hosts, isolate the first, check, heal, check. Returns what was observed."""
    from nemesis import Partitioner, isolate

    t0 = time.monotonic()
    net = Network(names)
    net.setup()
    try:
        net.start_probes()
        part = Partitioner(net)
        before = part.verify()
        fault = part.apply(isolate(names[0], names))
        during = net.reachability()
        healed = part.heal()
        after = net.reachability()
        return {"ok": True, "before": before.ok, "fault": fault.to_json(), "healed": healed.ok,
                "during": {f"{a}->{b}": v for (a, b), v in sorted(during.items())},
                "after": {f"{a}->{b}": v for (a, b), v in sorted(after.items())},
                "seconds": round(time.monotonic() - t0, 2)}
    finally:
        net.teardown()


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "selftest":
        raise SystemExit(__doc__)
    if missing_tools():
        raise SystemExit(f"missing tools: {missing_tools()}")
    if not in_private_netns():
        reexec_private([os.path.abspath(__file__), *argv])
    sys.path.insert(0, HERE)
    print(json.dumps(selftest(argv[1:] or ["n1", "n2", "n3"])))


if __name__ == "__main__":
    main(sys.argv[1:])
