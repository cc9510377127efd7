"""Nemeses: network partitions (nftables in the switch namespace) and process faults.

Partitions are ONE nftables set of (src . dst) address pairs to drop, in a bridge-family
forward chain of the switch namespace; every change is one `nft -f` transaction
(flush + add), so a swap from one partition to the next is atomic. Lossy links are a
second set whose packets are dropped with `numgen random mod 100 < P`.

Every partition is verified after it is applied with a TCP probe of each pair of hosts
(a silent no-op partition would make a run worthless): `Partitioner.apply` raises
`FaultNotVerified` if what the probes see differs from what was asked for.

Process faults: `Proc` runs a command in a host; kill -9 + restart, SIGSTOP/SIGCONT.
A clock nemesis (faketime) is not implemented: libfaketime is not installed here.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Sequence

from hosts import SWITCH, Network, addr_of

TABLE = "jepsen"
Pair = tuple[str, str]

TABLE_RULES = f"""
table bridge {TABLE} {{
    set blocked {{ type ipv4_addr . ipv4_addr; }}
    set lossy {{ type ipv4_addr . ipv4_addr; }}
    chain loss {{
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ip saddr . ip daddr @blocked counter drop
        jump loss
    }}
}}
"""


def nft(script: str) -> None:
    """Run an nft script (one transaction) in the switch namespace."""
    p = subprocess.run(["ip", "netns", "exec", SWITCH, "nft", "-f", "-"], input=script, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nft failed: {p.stderr.strip()}\n{script}")


def install_table() -> None:
    nft(TABLE_RULES)


# -- partitions ------------------------------------------------------------------------

@dataclass
class Partition:
    """Directed host pairs to drop, and pairs to thin with a loss percentage."""

    name: str
    blocked: set[Pair] = field(default_factory=set)
    lossy: set[Pair] = field(default_factory=set)
    loss_percent: int = 0
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "blocked": sorted(map(list, self.blocked)),
                "lossy": sorted(map(list, self.lossy)), "loss_percent": self.loss_percent}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Partition":
        return Partition(d["name"], {tuple(p) for p in d.get("blocked", [])},  # type: ignore[misc]
                         {tuple(p) for p in d.get("lossy", [])}, int(d.get("loss_percent", 0)),  # type: ignore[misc]
                         dict(d.get("args", {})))

    def cut(self, a: str, b: str) -> bool:
        """Can a TCP handshake between a and b not complete? (Both directions must pass.)"""
        return (a, b) in self.blocked or (b, a) in self.blocked


def _both(a_side: Iterable[str], b_side: Iterable[str]) -> set[Pair]:
    a_side, b_side = list(a_side), list(b_side)
    return {(a, b) for a in a_side for b in b_side} | {(b, a) for a in a_side for b in b_side}


def heal() -> Partition:
    return Partition("heal")


def isolate(node: str, nodes: Sequence[str]) -> Partition:
    """Cut `node` off from the others of `nodes` (use it on the current leader too)."""
    return Partition("isolate", _both([node], [n for n in nodes if n != node]), args={"node": node})


def halves(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Two sides; the smaller one is a minority."""
    ns = list(nodes)
    rng.shuffle(ns)
    k = len(ns) // 2
    return Partition("halves", _both(ns[:k], ns[k:]), args={"minority": sorted(ns[:k]), "majority": sorted(ns[k:])})


def bridge(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Two halves that cannot talk, and one node in the middle that talks to both."""
    ns = list(nodes)
    rng.shuffle(ns)
    k = len(ns) // 2
    left, middle, right = ns[:k], ns[k], ns[k + 1:]
    return Partition("bridge", _both(left, right), args={"left": sorted(left), "bridge": middle, "right": sorted(right)})


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Each node sees a majority (itself and its ring neighbours), but every node's majority
    is different. Needs 5 or more nodes."""
    ns = list(nodes)
    if len(ns) < 5:
        raise ValueError("majorities ring needs at least 5 nodes")
    rng.shuffle(ns)
    n = len(ns)
    k = (n // 2 + 1) // 2  # neighbours on each side: 1 + 2k >= n // 2 + 1, a majority
    sees = {ns[i]: {ns[(i + d) % n] for d in range(-k, k + 1)} for i in range(n)}
    blocked = {(a, b) for a in ns for b in ns if a != b and b not in sees[a]}
    return Partition("majorities-ring", blocked, args={"ring": ns})


def cut(group_a: Sequence[str], group_b: Sequence[str], name: str = "cut") -> Partition:
    """Cut every link between two groups (e.g. agents and the control plane)."""
    return Partition(name, _both(group_a, group_b), args={"a": sorted(group_a), "b": sorted(group_b)})


def lossy(pairs: Iterable[Pair], percent: int) -> Partition:
    """Drop `percent`% of packets on these directed links (both directions: pass both)."""
    ps = set(pairs)
    return Partition("lossy", lossy=ps, loss_percent=percent, args={"percent": percent})


def render(p: Partition) -> str:
    """One nft transaction that replaces the current partition with `p`."""
    lines = [f"flush set bridge {TABLE} blocked", f"flush set bridge {TABLE} lossy", f"flush chain bridge {TABLE} loss"]
    if p.blocked:
        elems = ", ".join(f"{addr_of(a)} . {addr_of(b)}" for a, b in sorted(p.blocked))
        lines.append(f"add element bridge {TABLE} blocked {{ {elems} }}")
    if p.lossy and p.loss_percent > 0:
        elems = ", ".join(f"{addr_of(a)} . {addr_of(b)}" for a, b in sorted(p.lossy))
        lines.append(f"add element bridge {TABLE} lossy {{ {elems} }}")
        lines.append(f"add rule bridge {TABLE} loss ip saddr . ip daddr @lossy numgen random mod 100 < {p.loss_percent} drop")
    return "\n".join(lines) + "\n"


class FaultNotVerified(RuntimeError):
    pass


@dataclass
class Verification:
    ok: bool
    mismatches: list[dict[str, Any]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "mismatches": self.mismatches, "seconds": round(self.seconds, 3)}


@dataclass
class Applied:
    partition: Partition
    verification: Verification

    def to_json(self) -> dict[str, Any]:
        return {**self.partition.to_json(), "verified": self.verification.to_json()}


class Partitioner:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.current = heal()

    def verify(self, p: Partition | None = None, attempts: int = 3) -> Verification:
        """Probe every pair; lossy pairs are not probed (a probe may or may not pass)."""
        p = p or self.current
        t0 = time.monotonic()
        mismatches: list[dict[str, Any]] = []
        for _attempt in range(attempts):
            seen = self.net.reachability()
            mismatches = []
            for (a, b), ok in sorted(seen.items()):
                if (a, b) in p.lossy or (b, a) in p.lossy:
                    continue
                want = not p.cut(a, b)
                if ok != want:
                    mismatches.append({"from": a, "to": b, "reachable": ok, "expected": want})
            if not mismatches:
                break
            time.sleep(0.2)
        return Verification(not mismatches, mismatches, time.monotonic() - t0)

    def apply(self, p: Partition) -> Applied:
        nft(render(p))
        self.current = p
        v = self.verify(p)
        if not v.ok:
            raise FaultNotVerified(f"partition {p.name} not in effect: {v.mismatches[:5]}")
        return Applied(p, v)

    def heal(self) -> Verification:
        return self.apply(heal()).verification


# -- processes -------------------------------------------------------------------------

class Proc:
    """A long-running command inside a test host, with kill -9 / restart / pause / resume."""

    def __init__(self, net: Network, host: str, argv: Sequence[str], log_path: str,
                 env: dict[str, str] | None = None, share_mounts: bool = False) -> None:
        self.net, self.host, self.argv, self.log_path = net, host, list(argv), log_path
        self.env = env
        self.share_mounts = share_mounts  # see Network.command (a runc agent)
        self.popen: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.paused = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.alive():
            return
        self.log = open(self.log_path, "ab")
        self.log.write(f"\n=== start {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        self.log.flush()
        env = dict(os.environ, **(self.env or {}))
        self.popen = self.net.spawn(self.host, self.argv, self.share_mounts, stdout=self.log,
                                    stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        self.paused = False

    def _signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill9(self) -> None:
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()
        if self.log:
            self.log.close()
            self.log = None
        self.paused = False

    def restart(self) -> None:
        self.kill9()
        self.start()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen is None:
            return
        self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
        if self.log:
            self.log.close()
            self.log = None
