"""A cluster of real RaftNode objects driven by one seeded schedule.

One step: the clock moves 5-60 ms; every message due is delivered; every live node is ticked once
(``doTick(0)``, in a seeded order); then maybe a fault (partition, heal, crash, restart) and maybe a
client command; then the invariants of checks.py. Every random choice comes from ``random.Random(seed)``,
so a seed replays exactly; :attr:`SimResult.trace` hashes what happened (messages delivered, faults,
acknowledgements, leaders) to prove it.

Crashes keep only what the node had made durable: each node's journal, meta and snapshot files live
on its own :class:`SimDisk` (``RaftNode(disk=...)``), and a crash, between steps or in the middle of a
disk operation, keeps only what was synced (``torn``: plus part of the unsynced tail).

Membership changes (``members=True``), as an operator makes them through raftctl/node/members.py: the
leader's ``add_learner`` for a new replica (a spare id, started with an empty disk, the current members as its
peers, and ``join``; the leader promotes it to a voter once it has caught up) or ``removeNodeFromCluster`` for a member other than the leader (live or crashed),
one change at a time. The operator's view of the members follows the callbacks (and, if none came within
MEMBER_TIMEOUT, the leader's configuration, as ``raftctl cluster status`` shows it): a removed replica is
stopped, an addition that failed is stopped, and only members are restarted after crashes. Members stay
between max(3, nodes - 1) and nodes + 1.
"""
from __future__ import annotations

import hashlib
import posixpath
import random
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.config import FAIL_REASON

from raftctl.node.raft import RaftNode
from raftctl.statemachine import commands as c

from .checks import Checker, Violation, entries
from .clock import SimClock, patched
from .disk import SimDisk
from .network import NetFaults, SimNetwork, SimTransport

LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
SIM_ROOT = "/raftctl-sim"


@dataclass
class SimConfig:
    seed: int
    steps: int = 400
    nodes: int = 3
    repair: bool | None = None          # RaftNode(repair=...); None = its default
    net: NetFaults = field(default_factory=NetFaults)
    p_partition: float = 0.012
    p_heal: float = 0.01
    p_crash: float = 0.006
    p_restart: float = 0.06
    p_command: float = 0.6
    p_io_crash: float = 0.004           # arm a node's disk to lose power within its next few operations
    torn: bool = False                  # crashes may keep part of an unsynced tail
    dt: tuple[float, float] = (0.005, 0.06)
    # Chaos, then calm: every chaos+calm seconds, partitions heal and crashed nodes restart, and for
    # `calm` seconds only the network's message faults go on. By the end of a calm window every node
    # must have applied what was committed `catch_up` seconds before (liveness: log repair converges).
    chaos: float = 8.0
    calm: float = 4.0
    catch_up: float = 2.5
    safety: bool = True                 # False: check liveness only (to show what it finds on its own)
    initial_partition: list[list[int]] | None = None   # node numbers (1-based) per group, from the start
    compact: int = 0                    # > 0: compact the log past this many entries (snapshots sent and
                                        # installed); 0: no compaction
    members: bool = False               # membership changes (add a replica, remove one) during the chaos
    p_member: float = 0.03              # per chaos step, with members on and no change in flight

    def replay_command(self) -> str:
        cmd = f"python -m tests.sim --seed {self.seed} --steps {self.steps} --nodes {self.nodes}"
        if self.repair is not None:
            cmd += " --repair" if self.repair else " --no-repair"
        default = NetFaults()
        for name in ("loss", "duplicate", "reorder"):
            if getattr(self.net, name) != getattr(default, name):
                cmd += f" --{name} {getattr(self.net, name)}"
        if not self.net.duplicate_votes:
            cmd += " --no-dup-votes"
        if (self.net.latency, self.net.reorder_delay) != (default.latency, default.reorder_delay):
            cmd += " (with non-default latencies: replay from Python)"
        if self.torn:
            cmd += " --torn"
        if self.compact:
            cmd += f" --compact {self.compact}"
        if self.members:
            cmd += " --members"
        if not self.safety:
            cmd += " --liveness-only"
        return cmd


@dataclass
class SimResult:
    seed: int
    steps: int
    trace: str
    faults: dict[str, int]
    net: dict[str, int]
    counts: dict[str, int]
    violation: Violation | None = None
    sim_seconds: float = 0.0


class SimCluster:
    def __init__(self, cfg: SimConfig) -> None:
        if cfg.nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.clock = SimClock()
        self.trace = hashlib.sha256(b"raftctl-sim-1")
        # with membership changes, one spare id: a replica the operator may add (and remove again)
        self.ids = [f"n{i}:{7000 + i}" for i in range(1, cfg.nodes + 1 + (1 if cfg.members else 0))]
        self.members = set(self.ids[:cfg.nodes])          # the operator's view of the cluster
        self.peers_of = {i: [j for j in sorted(self.members) if j != i] for i in self.members}
        self._change: dict[str, Any] | None = None       # the membership change in flight
        self.net = SimNetwork(self.ids, self.rng, self.clock, cfg.net, self.trace)
        self.checker = Checker(cfg.seed, cfg.replay_command())
        self.nodes: dict[str, RaftNode] = {}
        self.disks = {i: SimDisk() for i in self.ids}
        self.faults = {"partition": 0, "heal": 0, "crash": 0, "io_crash": 0, "restart": 0, "commands": 0,
                       "acked": 0, "unsynced_bytes_lost": 0, "calm_windows": 0}
        if cfg.members:
            self.faults.update(member_add=0, member_remove=0, member_refused=0, member_timeout=0)
        self.net.on_crash = self._io_crashed
        self.net.powered_off = lambda node_id: self.disks[node_id].dead
        self._start_time = self.clock.now
        self._calm = False
        self._target: int | None = None
        self.cmd_seq = 0
        self.snapshots_restored = 0     # received snapshots restored and loaded (SnapshotFiles.restored)
        self._pending_acks: list[tuple[str, str, bytes, int]] = []
        self.joiners: set[str] = set()   # replicas added by a membership change (started to join)

    # -- nodes ----------------------------------------------------------------------
    def _event(self, text: str) -> None:
        self.trace.update(text.encode() + b"\n")

    def _start(self, node_id: str) -> None:
        data_dir = posixpath.join(SIM_ROOT, node_id.replace(":", "_"))   # a path on the node's SimDisk only
        transport = SimTransport(self.net, node_id)
        overrides: dict[str, Any] = {
            "autoTick": False,
            "logCompactionMinEntries": self.cfg.compact or 10 ** 9,
            "logCompactionMinTime": 10 ** 9,
        }
        kwargs: dict[str, Any] = {"transport": transport, "conf_overrides": overrides, "disk": self.disks[node_id],
                                  # a replica added at runtime joins (`raftctl server --join`), every restart too
                                  "join": node_id in self.joiners}
        if self.cfg.repair is not None:
            kwargs["repair"] = self.cfg.repair
        holder: list[RaftNode] = []

        def on_applied() -> None:
            if holder:
                st = holder[0].state
                self.checker.applied(node_id, st.entries, st.chain)

        def on_state_changed(old: int, new: int) -> None:
            if new == LEADER and holder:
                term = holder[0].raftCurrentTerm
                self._event(f"leader {node_id} {term}")
                self.checker.became_leader(node_id, term)

        node = RaftNode(node_id, self.peers_of[node_id], data_dir, None, on_applied, on_state_changed, **kwargs)
        holder.append(node)
        self.nodes[node_id] = node
        self.checker.node_started(node_id)
        self.net.attach(transport)

    def _io_crashed(self, node_id: str) -> None:
        """A node's disk lost power mid-operation (SimCrash): the node is gone from that instant."""
        if node_id in self.nodes:
            self._event(f"io-crash {node_id}")
            self.faults["io_crash"] += 1
            self._crash(node_id)

    def _crash(self, node_id: str) -> None:
        self.snapshots_restored += self.nodes[node_id]._snapshots.restored
        self.nodes.pop(node_id)
        self.net.detach(node_id)
        lost = self.disks[node_id].crash(self.rng, self.cfg.torn)
        self.faults["unsynced_bytes_lost"] += lost
        self._pending_acks = [p for p in self._pending_acks if p[0] != node_id]

    def _down(self) -> list[str]:
        """Members that are not running (restarted by the schedule)."""
        return sorted(self.members - set(self.nodes))

    # -- membership changes (members.py's calls) -----------------------------------------
    MEMBER_TIMEOUT = 3.0

    def _membership(self) -> None:
        cfg, rng = self.cfg, self.rng
        change = self._change
        if change is not None:
            if change["result"] is not None:
                self._change_done(change, change["result"] == FAIL_REASON.SUCCESS)
            elif self.clock.now - change["at"] > self.MEMBER_TIMEOUT:
                leaders = [i for i, n in self.nodes.items() if n._isLeader()]
                # no answer: the operator reads the configuration the leader of the newest term shows, once that
                # leader has committed its whole log (a change still pending anywhere may yet commit: seeds 5081,
                # 5517, 5713 counted a replica removed later by a pending change as a member, "short of the log")
                newest = max(leaders, key=lambda i: (self.nodes[i].raftCurrentTerm, i)) if leaders else None
                lead = self.nodes[newest] if newest is not None else None
                if lead is not None and lead.raftCommitIndex >= lead._SyncObj__raftLog[-1][1]:
                    self.faults["member_timeout"] += 1
                    config = {newest} | {n.id for n in lead._SyncObj__otherNodes} | set(lead.learner_ids())
                    self._change_done(change, (change["node"] in config) == (change["op"] == "add"))
            return
        if rng.random() >= cfg.p_member:
            return
        leaders = sorted(i for i, n in self.nodes.items() if n._isLeader())
        if not leaders:
            return
        leader = rng.choice(leaders)
        spares = sorted(set(self.ids) - self.members - set(self.nodes))
        can_add = spares and len(self.members) < cfg.nodes + 1
        can_remove = len(self.members) > max(3, cfg.nodes - 1)
        if not (can_add or can_remove):
            return
        op = "add" if can_add and (not can_remove or rng.random() < 0.5) else "remove"
        if op == "add":
            target = rng.choice(spares)
            self.disks[target] = SimDisk()          # a new replica: an empty data dir
            self.joiners.add(target)
            self.peers_of[target] = sorted(self.members)
            self._start(target)
        else:
            target = rng.choice(sorted(self.members - {leader}))
        change: dict[str, Any] = {"op": op, "node": target, "at": self.clock.now, "result": None}
        self._change = change
        self._event(f"member {op} {target} via {leader}")

        def done(result: Any, err: int) -> None:
            change["result"] = err
        node = self.nodes[leader]
        # members.py adds a learner (the leader promotes it once caught up); pysyncobj's own code (repair off)
        # knows only addNodeToCluster
        add = node.add_learner if node._repair else node.addNodeToCluster
        (add if op == "add" else node.removeNodeFromCluster)(target, callback=done)
        self.net.flush()

    def _change_done(self, change: dict[str, Any], applied: bool) -> None:
        self._change = None
        target = change["node"]
        self._event(f"member {change['op']} {target} {'done' if applied else 'refused'}")
        if not applied:
            self.faults["member_refused"] += 1
            if change["op"] == "add" and target in self.nodes:  # not added: the operator stops it
                self._crash(target)
            return
        self.faults["member_" + change["op"]] += 1
        if change["op"] == "add":
            self.members.add(target)
        else:
            self.members.discard(target)
            if target in self.nodes:  # removed: the operator stops it
                self._crash(target)

    # -- client commands ---------------------------------------------------------------
    def _clients(self) -> None:
        """A burst of 1-4 commands, to a node that believes it leads half of the time (as clients that
        follow the leader do: an isolated old leader keeps taking writes until it steps down, which
        gives it a divergent tail to repair after the heal), else to any node (it forwards them)."""
        leaders = sorted(i for i, n in self.nodes.items() if n._isLeader())
        if leaders and self.rng.random() < 0.5:
            node_id = self.rng.choice(leaders)
        else:
            node_id = self.rng.choice(sorted(self.nodes))
        for _ in range(self.rng.randint(1, 4)):
            self._submit(node_id)
        self.net.flush()

    def _submit(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self.cmd_seq += 1
        cmd_id = f"s{self.cfg.seed}-c{self.cmd_seq}"
        payload = c.encode_entry([c.Noop(id=cmd_id, at=self.cmd_seq)])
        self.faults["commands"] += 1

        def done(result: Any, err: int) -> None:
            if err != FAIL_REASON.SUCCESS or self.nodes.get(node_id) is not node:
                return
            # called while the node applies the entry: it is the one after raftLastApplied
            idx = node.raftLastApplied + 1
            got = entries(node, idx, idx)
            term = got[0][2] if got else -1
            self.faults["acked"] += 1
            self._event(f"ack {cmd_id} {idx} {term}")
            self.checker.acknowledged(node_id, cmd_id, payload, idx, term, got[0][0] if got else None,
                                      node.raftCurrentTerm)

        node.apply_entry(payload, callback=done)

    # -- the schedule --------------------------------------------------------------------
    def _phase(self) -> None:
        """Enter or leave a calm window; at its end, check that every node caught up."""
        cfg = self.cfg
        t = (self.clock.now - self._start_time) % (cfg.chaos + cfg.calm)
        calm = t >= cfg.chaos
        if calm and not self._calm:
            self._calm = True
            self._target = None
            self.faults["calm_windows"] += 1
            self._event("calm")
            # no fault in a calm window: a power cut armed during the chaos that has not struck yet is
            # called off (seed 1271: two of four nodes lost power after the calm began, and the liveness
            # check below found no progress "with every node up")
            for node_id in sorted(self.disks):
                self.disks[node_id].armed = None
            if self.net.partitioned:
                self.faults["heal"] += 1
                self.net.heal()
            for node_id in self._down():
                self.faults["restart"] += 1
                self._start(node_id)
        elif calm and self._target is None and t >= cfg.chaos + cfg.calm - cfg.catch_up:
            self._target = max((n.raftCommitIndex for n in self.nodes.values()), default=0)
        elif not calm and self._calm:
            self._calm = False
            target = self._target
            if target is not None:
                behind = {i: n.raftLastApplied for i, n in sorted(self.nodes.items())
                          if n.raftLastApplied < target and i in self.members}
                if behind:
                    self.checker.fail("liveness", f"{cfg.calm:.1f} s after a heal with every node up, "
                                      f"{behind} (last applied) still short of index {target}, "
                                      f"committed {cfg.catch_up:.1f} s before")

    def _faults(self) -> None:
        cfg, rng = self.cfg, self.rng
        if self._calm:
            if self._change is not None:
                self._membership()  # only settles the change in flight
            if self.nodes and rng.random() < cfg.p_command:
                self._clients()
            return
        r = rng.random()
        if not self.net.partitioned and r < cfg.p_partition and len(self.ids) > 1:
            ids = sorted(self.ids)
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            groups = [sorted(ids[:cut]), sorted(ids[cut:])]
            self._event(f"partition {groups}")
            self.faults["partition"] += 1
            self.net.partition(groups)
        elif self.net.partitioned and r < cfg.p_heal:
            self._event("heal")
            self.faults["heal"] += 1
            self.net.heal()
        if rng.random() < cfg.p_crash and len(self.nodes) > 1:
            # the leader half of the time: that is where acknowledged writes are at risk
            leaders = sorted(i for i, n in self.nodes.items() if n._isLeader())
            victim = rng.choice(leaders) if leaders and rng.random() < 0.5 else rng.choice(sorted(self.nodes))
            self._event(f"crash {victim}")
            self.faults["crash"] += 1
            self._crash(victim)
        for node_id in self._down():
            if rng.random() < cfg.p_restart:
                self._event(f"restart {node_id}")
                self.faults["restart"] += 1
                self._start(node_id)
        if rng.random() < cfg.p_io_crash and self.nodes:
            victim = rng.choice(sorted(self.nodes))
            self.disks[victim].arm(rng.randint(1, 8))
        if cfg.members:
            self._membership()
        if self.nodes and rng.random() < cfg.p_command:
            self._clients()

    def _check(self) -> None:
        if self.checker.first is not None:
            raise self.checker.first
        if not self.cfg.safety:
            return
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            self.checker.check_node(node_id, node)
            if node._isLeader():
                self.checker.check_leader(node_id, node, node.raftCurrentTerm)

    def step(self, n: int) -> None:
        self.checker.step = n
        self._event(f"step {n}")
        self.clock.advance(self.rng.uniform(*self.cfg.dt))
        self.net.deliver_due()
        order = sorted(self.nodes)
        self.rng.shuffle(order)
        for node_id in order:
            node = self.nodes.get(node_id)
            if node is not None:
                try:
                    node.doTick(0.0)
                except BaseException:
                    if not self.disks[node_id].dead:
                        raise
                if self.disks[node_id].dead:  # the power went out during the tick (SimCrash, maybe caught)
                    self.net.outbox = [m for m in self.net.outbox if m[0] != node_id]
                    self._io_crashed(node_id)
                self.net.flush()
        self._phase()
        self._faults()
        self._check()

    def run(self) -> SimResult:
        violation = None
        done = 0
        start = self.clock.now
        with patched(self.clock, self.rng):
            for node_id in sorted(self.members):
                self._start(node_id)
            if self.cfg.initial_partition:
                self.net.partition([[self.ids[i - 1] for i in g] for g in self.cfg.initial_partition])
            for n in range(1, self.cfg.steps + 1):
                try:
                    self.step(n)
                except Violation as exc:
                    violation = exc
                    break
                done = n
        counts = dict(self.checker.counts)
        counts["max_commit"] = max((v.max_commit for v in self.checker.views.values()), default=0)
        counts["runaway_clock_reads"] = self.clock.runaway_reads
        counts["snapshots_restored"] = self.snapshots_restored + sum(
            n._snapshots.restored for n in self.nodes.values())
        counts["nodes_with_snapshot"] = sum(
            1 for i, d in self.disks.items()
            if d.size(posixpath.join(SIM_ROOT, i.replace(":", "_"), "raft.snapshot")) > 0)
        return SimResult(self.cfg.seed, done, self.trace.hexdigest(), dict(self.faults),
                         dict(self.net.stats), counts, violation, self.clock.now - start)


def run_seed(cfg: SimConfig) -> SimResult:
    return SimCluster(cfg).run()
