"""A simulated network: pysyncobj's Transport over a seeded message scheduler.

Every message is pickled on send (as the TCP transport does, so no object is shared between nodes)
and delivered at a time the scheduler draws: a small base latency, sometimes a long extra delay
(reordering), sometimes twice (duplication), sometimes never (loss). Links follow partitions: a
link between two live nodes in the same group is connected; a partition or a crash disconnects it
(both sides get pysyncobj's disconnect callback and everything in flight on it is dropped, as a
broken TCP connection would), a heal or a restart reconnects it (connect callbacks).

Determinism: pysyncobj iterates sets of nodes whose order depends on the process's string-hash
seed. Sends are therefore collected in an outbox and drawn in a canonical order (stable by
destination, so each destination sees its messages in send order) when the simulation flushes it
after each tick or delivery; the schedule then depends only on the seed.
"""
from __future__ import annotations

import hashlib
import heapq
import pickle
import random
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport



@dataclass
class NetFaults:
    loss: float = 0.02          # probability a message is dropped
    duplicate: float = 0.02     # probability a message is delivered twice
    reorder: float = 0.05       # probability a message gets a long extra delay
    latency: tuple[float, float] = (0.0005, 0.005)
    reorder_delay: tuple[float, float] = (0.005, 0.15)
    # pysyncobj counts response_vote messages, not voters: a duplicated vote can elect a leader
    # without a majority (found by this simulation, seed 13). False = never duplicate votes.
    duplicate_votes: bool = True

    @classmethod
    def none(cls) -> "NetFaults":
        return cls(loss=0.0, duplicate=0.0, reorder=0.0)


class SimTransport(Transport):
    """One node's end of the simulated network."""

    def __init__(self, network: "SimNetwork", node_id: str) -> None:
        super().__init__(None, None, [])
        self.network = network
        self.node_id = node_id
        self.connected: set[str] = set()
        self.destroyed = False

    # pysyncobj's Transport interface
    @property
    def ready(self) -> bool:
        return True

    def tryGetReady(self) -> None:  # noqa: N802 (pysyncobj's name)
        return None

    def waitReady(self) -> None:  # noqa: N802
        return None

    def addNode(self, node: Any) -> None:  # noqa: N802 - membership changes are not simulated
        return None

    def dropNode(self, node: Any) -> None:  # noqa: N802
        return None

    def send(self, node: Any, message: Any) -> bool:
        dst = node.id if hasattr(node, "id") else str(node)
        if self.destroyed or dst not in self.connected:
            return False
        kind = message.get("type") if isinstance(message, dict) else None
        self.network.outbox.append((self.node_id, dst, pickle.dumps(message, protocol=4), kind))
        return True

    def destroy(self) -> None:
        self.destroyed = True

    # called by the network
    def deliver(self, src: str, message: Any) -> None:
        self._onMessageReceived(TCPNode(src), message)

    def link_up(self, peer: str) -> None:
        if peer not in self.connected:
            self.connected.add(peer)
            self._onNodeConnected(TCPNode(peer))

    def link_down(self, peer: str) -> None:
        if peer in self.connected:
            self.connected.discard(peer)
            self._onNodeDisconnected(TCPNode(peer))


class SimNetwork:
    def __init__(self, ids: list[str], rng: random.Random, clock: Callable[[], float],
                 faults: NetFaults, trace: "hashlib._Hash") -> None:
        self.ids = list(ids)
        self.rng = rng
        self.clock = clock
        self.faults = faults
        self.trace = trace
        self.transports: dict[str, SimTransport] = {}   # live nodes only
        self.group: dict[str, int] = {i: 0 for i in ids}
        self.epoch: dict[frozenset[str], int] = {}      # bumped when a link breaks: drops its in-flight messages
        self.queue: list[tuple[float, int, str, str, int, bytes]] = []
        self.outbox: list[tuple[str, str, bytes, str | None]] = []
        self.on_crash: Callable[[str], None] = lambda node_id: None   # a node's disk lost power (SimCrash)
        self.powered_off: Callable[[str], bool] = lambda node_id: False  # its disk raised SimCrash
        self.seq = 0
        self.stats = {"sent": 0, "delivered": 0, "lost": 0, "duplicated": 0, "reordered": 0,
                      "dropped_by_link": 0}

    # -- topology ----------------------------------------------------------
    def _reachable(self, a: str, b: str) -> bool:
        return a != b and a in self.transports and b in self.transports and self.group[a] == self.group[b]

    def _relink(self, before: set[frozenset[str]]) -> None:
        after = {frozenset((a, b)) for a in self.ids for b in self.ids if a < b and self._reachable(a, b)}
        for pair in sorted(before - after, key=sorted):
            self.epoch[pair] = self.epoch.get(pair, 0) + 1
            for a, b in (sorted(pair), sorted(pair, reverse=True)):
                t = self.transports.get(a)
                if t is not None:
                    t.link_down(b)
                    self.flush()
        for pair in sorted(after - before, key=sorted):
            for a, b in (sorted(pair), sorted(pair, reverse=True)):
                self.transports[a].link_up(b)
                self.flush()

    def _links(self) -> set[frozenset[str]]:
        return {frozenset((a, b)) for a in self.ids for b in self.ids if a < b and self._reachable(a, b)}

    def attach(self, transport: SimTransport) -> None:
        before = self._links()
        self.transports[transport.node_id] = transport
        self._relink(before)

    def detach(self, node_id: str) -> None:
        before = self._links()
        t = self.transports.pop(node_id)
        t.destroy()
        # the crashed node's own ends just vanish; its peers see the links go down
        t.connected.clear()
        self._relink(before)

    def partition(self, groups: list[list[str]]) -> None:
        before = self._links()
        for g, members in enumerate(groups):
            for m in members:
                self.group[m] = g
        self._relink(before)

    def heal(self) -> None:
        self.partition([self.ids])

    @property
    def partitioned(self) -> bool:
        return len(set(self.group.values())) > 1

    # -- messages ------------------------------------------------------------
    def flush(self) -> None:
        """Schedule the outbox in a canonical order (see the module docstring)."""
        if not self.outbox:
            return
        out = sorted(enumerate(self.outbox), key=lambda item: (item[1][0], item[1][1], item[0]))
        self.outbox = []
        f = self.faults
        now = self.clock()
        for _, (src, dst, data, kind) in out:
            self.stats["sent"] += 1
            if self.rng.random() < f.loss:
                self.stats["lost"] += 1
                continue
            copies = 1
            if self.rng.random() < f.duplicate and (f.duplicate_votes or kind != "response_vote"):
                copies = 2
                self.stats["duplicated"] += 1
            for _ in range(copies):
                delay = self.rng.uniform(*f.latency)
                if self.rng.random() < f.reorder:
                    delay += self.rng.uniform(*f.reorder_delay)
                    self.stats["reordered"] += 1
                self.seq += 1
                ep = self.epoch.get(frozenset((src, dst)), 0)
                heapq.heappush(self.queue, (now + delay, self.seq, src, dst, ep, data))

    def deliver_due(self) -> int:
        """Deliver every message due by now (in time order; new sends are scheduled after it)."""
        n = 0
        now = self.clock()
        while self.queue and self.queue[0][0] <= now:
            _, seq, src, dst, ep, data = heapq.heappop(self.queue)
            t = self.transports.get(dst)
            if t is None or ep != self.epoch.get(frozenset((src, dst)), 0) or src not in t.connected:
                self.stats["dropped_by_link"] += 1
                continue
            self.trace.update(b"m%d:%s>%s:" % (seq, src.encode(), dst.encode()))
            self.trace.update(hashlib.sha256(data).digest())
            try:
                t.deliver(src, pickle.loads(data))
            except BaseException:
                if not self.powered_off(dst):
                    raise
            if self.powered_off(dst):
                # the power went out while it handled this message (whatever caught the SimCrash on the
                # way up): it is gone, and what it sent meanwhile was never on the wire
                self.outbox = [m for m in self.outbox if m[0] != dst]
                self.on_crash(dst)
            self.stats["delivered"] += 1
            n += 1
            self.flush()
        return n
