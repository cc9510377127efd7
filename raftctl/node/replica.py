"""A control replica: Raft member + proposer + blocking-query plumbing + HTTP API."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import aiohttp

from raftctl.aio import loop_name
from raftctl.clock import SYSTEM, Clock
from raftctl.discovery.dns import DnsServer
from raftctl.discovery.view import lookup
from raftctl.clusterid import derive_cluster_id
from raftctl.errors import Unavailable, ValidationError
from raftctl.node import auth
from raftctl.node.api import make_app
from raftctl.node.autoscale import Autoscaler, Metrics
from raftctl.node.failover import FailoverConfig
from raftctl.node.leader import Leadership, every
from raftctl.node.proposer import Proposer
from raftctl.node.raft import RaftNode
from raftctl.node.rollout import RolloutController
from raftctl.gcstats import GcStats, freeze, thresholds_from_env, tune
from raftctl.gil import switch_interval_from_env, tune_switch_interval
from raftctl.node.looplag import LoopLag
from raftctl.node.admission import (AdmittingRunner, Listener, cannot_listen, default_limit, default_reserve,
                                    raise_fd_limit)
from raftctl.node.scheduling import SchedulerLoop
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import Result
from raftctl.statemachine.state import State

API_BACKLOG = 4096
"""The API socket's listen backlog (the kernel caps it at net.core.somaxconn; Go's listeners, etcd's included, take
somaxconn). aiohttp's default is 128: at 10,000 simulated machines every replica's accept queue sat full at 128
with 8,700-10,800 agents' connections in SYN-SENT, each retried after 1 s, 3 s, 7 s... (docs/scaling.md)."""
CELL_TIMING_EVERY_S = 1.0   # how often the election timeout follows the machines table (_follow_cell)

log = logging.getLogger("raftctl.node")
T = TypeVar("T")


@dataclass
class ServerConfig:
    node_id: str
    data_dir: str
    raft: str                      # host:port this replica's Raft listens on
    peers: list[str]               # the other replicas' Raft addresses
    api: str                       # host:port of the HTTP API
    secret: str | None             # cluster secret; None only with insecure_dev
    insecure_dev: bool = False
    dns_port: int | None = None
    advertise_api: str | None = None
    compact_entries: int = 20000   # log entries kept before a snapshot compacts the log
    join: bool = False             # added to a running cluster: no vote until its log makes it a voter (--join)
    heartbeat_ttl_s: float = 3.0
    heartbeat_interval_s: float = 1.0
    max_heartbeats_per_s: int = FailoverConfig.max_heartbeats_per_s   # the leader's heartbeat budget; 0: none
    max_body: int = 1 << 20        # cap on JSON/CBOR request bodies (blob uploads stream with their own limit)
    tls_cert: str | None = None    # serve the API over HTTPS with this certificate and key
    tls_key: str | None = None
    tls_ca: str | None = None      # verify other replicas with this CA (default: the system trust store)
    max_connections: int = 0       # open API connections at most (admission.py); 0: the open-files limit - reserve
    reserved_connections: int | None = None  # of max_connections, kept for admin/operator tokens; None: default_reserve
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return ("https://" if self.tls_cert else "http://") + (self.advertise_api or self.api)


class Replica:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.clock: Clock = SYSTEM   # the one clock of this replica's handlers and loops (tests inject a fake)
        self.started_at = time.time()
        self.election_timeout_s: tuple[float, float] | None = None   # the Raft election timeout in force
        self.loop: asyncio.AbstractEventLoop | None = None
        self.raft: RaftNode | None = None
        self.proposer: Proposer | None = None
        self._changed: asyncio.Condition | None = None
        self._blocking_reads = 0   # wait_for calls under way (on the loop): _notify wakes _changed only for them
        self._notify_pending = False
        # machine watches (GET /v1/agent/assignments/{machine}?index=N): machine -> the parked watches' futures.
        # A commit wakes only the watches of the machines it changed (State.changed_machines, taken on the tick
        # thread into _woken under _woken_lock and handed to the loop by the coalesced _notify).
        self._machine_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._woken: set[str] = set()
        self._woken_all = False
        self._woken_lock = threading.Lock()
        self.machine_wakes = 0                # watches woken (for benchmarks and tests)
        self.leader_changes = 0
        self.digest_inflight: Any = None   # the state hash being computed (snapshot.state_digest), shared
        self._role = "follower"
        self._tasks: list[asyncio.Task] = []
        self.runner: AdmittingRunner | None = None
        self.listener: Listener | None = None
        self.gc_stats: GcStats | None = None   # set by serve(): the collector's cost in this replica's process
        self.loop_lag = LoopLag()              # how late its event loop wakes (looplag.py), run once started
        self.event_loop: str | None = None     # set by serve(): uvloop or asyncio (aio.run)
        self.leadership: Leadership | None = None
        self.http: aiohttp.ClientSession | None = None
        self.controller_factories: list[Any] = [SchedulerLoop, RolloutController, Autoscaler]
        self.metrics = Metrics()

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        for name, addr in (("raft", self.cfg.raft), ("api", self.cfg.api)):
            problem = cannot_listen(addr)
            if problem:   # pysyncobj would retry a taken Raft port forever, silently: stop here instead
                raise ValidationError(f"cannot listen on {addr}: {problem}", field=name)
        limit = self.cfg.max_connections or default_limit(raise_fd_limit())
        reserve = default_reserve(limit) if self.cfg.reserved_connections is None else self.cfg.reserved_connections
        if not 0 <= reserve < limit:
            raise ValidationError(f"{reserve} connections cannot be kept for admin and operator tokens out of a limit "
                                  f"of {limit}: give fewer than --max-connections", field="reserved-connections")
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        server_ssl = client_ssl = None
        if self.cfg.tls_cert:  # before Raft starts: a bad certificate stops the replica at once
            from raftctl.tls import client_context, server_context

            assert self.cfg.tls_key is not None
            server_ssl = server_context(self.cfg.tls_cert, self.cfg.tls_key)
            client_ssl = client_context(self.cfg.tls_ca)
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        if self.cfg.secret:   # scrypt, kept per secret: not on the loop at the first assignment answer
            await asyncio.to_thread(derive_cluster_id, self.cfg.secret)
        self.raft = RaftNode(self.cfg.raft, self.cfg.peers, self.cfg.data_dir, self.cfg.secret,
                             on_applied=self._on_applied_threadsafe, on_state_changed=self._on_raft_state,
                             compact_entries=self.cfg.compact_entries, join=self.cfg.join)
        self.proposer = Proposer(self.raft, max_inflight=int(os.environ.get("RAFTCTL_MAX_INFLIGHT", "2")),
                                 clock=self.clock)
        self.proposer.start()
        # replica-to-replica calls (write forwarding, blob copies) verify the peer's certificate
        connector = aiohttp.TCPConnector(ssl=client_ssl) if client_ssl is not None else None
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15, sock_connect=2), connector=connector)
        app = make_app(self)
        self.runner = AdmittingRunner(app, limit=limit, reserve=reserve, access_log=None,
                                      shutdown_timeout=1.0)  # long polls must not hold shutdown
        await self.runner.setup()
        host, port = self.cfg.api.rsplit(":", 1)
        self.listener = Listener(self.runner, host, int(port), ssl=server_ssl, backlog=API_BACKLOG)
        await self.listener.start()
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="bootstrap"))
        self._tasks.append(asyncio.create_task(self.loop_lag.run(), name="loop lag"))
        self.dns = None
        if self.cfg.dns_port is not None:
            self.dns = DnsServer(lambda svc: self.read(lambda s: lookup(s.discovery, s.machines, svc)["endpoints"]),
                                 host, self.cfg.dns_port)
            await self.dns.start()
        self.leadership = Leadership(self, FailoverConfig(ttl_s=self.cfg.heartbeat_ttl_s,
                                                          interval_s=self.cfg.heartbeat_interval_s,
                                                          max_heartbeats_per_s=self.cfg.max_heartbeats_per_s),
                                     self.controller_factories, clock=self.clock)
        self._tasks.append(asyncio.create_task(self.leadership.run(), name="leadership"))
        self._tasks.append(asyncio.create_task(every(CELL_TIMING_EVERY_S, self._follow_cell, "cell timing",
                                                     self.clock), name="cell timing"))
        log.info("replica %s: raft %s, api %s", self.cfg.node_id, self.cfg.raft, self.cfg.api_url)

    async def _follow_cell(self) -> None:
        """The election timeout follows the machines table's size (raft.cell_election_timeout): every replica,
        as any of them may have to campaign."""
        if self.raft is not None:
            self.election_timeout_s = self.raft.follow_cell(self.read(lambda s: len(s.machines)))

    async def stop(self) -> None:
        for t in self._tasks:  # controllers first: they must not propose while leadership is handed over
            t.cancel()
        await self.hand_over_leadership()
        if self.proposer:
            await self.proposer.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.runner:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()
        if self.raft:
            raft, self.raft = self.raft, None
            await asyncio.get_running_loop().run_in_executor(None, raft.destroy_synchronous)

    TRANSFER_TIMEOUT_S = 2.0
    HELD_WRITES_GRACE_S = 2.0
    _stopping: asyncio.Event | None = None
    _handed_to: str | None = None
    _held = 0

    async def hand_over_leadership(self) -> str | None:
        """A graceful stop of the leader: hold new writes back (not proposed here), let the ones in flight
        commit, make the most up-to-date follower leader (TimeoutNow), then pass the held writes on to the new
        leader (pysyncobj forwards a follower's commands) and wait for their answers, and only then stop.
        Without a hand-over the held writes get a 503 saying nothing was applied. A follower just stops.
        Returns the new leader's Raft address, or None."""
        raft = self.raft
        self._stopping = asyncio.Event()
        if raft is None or not raft.is_leader():
            self._stopping.set()
            return None
        try:
            started = time.monotonic()
            self._handed_to = await asyncio.get_running_loop().run_in_executor(None, raft.transfer_leadership,
                                                                               self.TRANSFER_TIMEOUT_S)
            log.info("replica %s stopping: leadership %s after %.0f ms", self.cfg.node_id,
                     f"handed to {self._handed_to}" if self._handed_to else "not handed over",
                     (time.monotonic() - started) * 1000)
        finally:
            self._stopping.set()
        deadline = time.monotonic() + self.HELD_WRITES_GRACE_S
        while self._held and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._handed_to

    # -- state access ----------------------------------------------------
    def read(self, fn: Callable[[State], T]) -> T:
        """Run ``fn`` on the applied state under the apply lock (keep it short). Before the replica started
        Raft and once it stopped it (``stop``: a parked watch may wake after that) there is no state to read:
        Unavailable (503, try another replica), not an internal error."""
        raft = self._running_raft()
        with raft.lock:
            return fn(raft.state)

    @property
    def index(self) -> int:
        return self._running_raft().state.index

    def _running_raft(self) -> RaftNode:
        raft = self.raft
        if raft is None:
            raise Unavailable("this replica is starting or stopping; try another")
        return raft

    async def propose(self, cmd: c.Command, timeout: float | None = None) -> Result:
        if self.proposer is None:
            raise Unavailable("replica is starting")
        if self._stopping is not None:  # a graceful stop (hand_over_leadership): held until the hand-over
            self._held += 1
            try:
                await self._stopping.wait()
                if self._handed_to is None:  # not proposed here, so certainly not applied
                    raise Unavailable(f"replica {self.cfg.node_id} is stopping; the write was not proposed, "
                                      "nothing was applied (retry on another replica)")
                return await self.proposer.propose(cmd, timeout=timeout)  # a follower now: goes to the new leader
            finally:
                self._held -= 1
        return await self.proposer.propose(cmd, timeout=timeout)

    async def barrier(self, timeout: float | None = None) -> int:
        if self.proposer is None:
            raise Unavailable("replica is starting")
        return await self.proposer.barrier(timeout=timeout)

    async def wait_for(self, fn: Callable[[State], int], after: int, wait_s: float) -> int:
        """Blocking query: wait until ``fn(state) > after`` or ``wait_s`` passes; return fn(state)."""
        assert self._changed is not None
        deadline = time.monotonic() + wait_s
        self._blocking_reads += 1   # before the first read: an entry applied after it is always notified
        try:
            async with self._changed:
                while True:
                    current = self.read(fn)
                    left = deadline - time.monotonic()
                    if current > after or left <= 0:
                        return current
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self._blocking_reads -= 1

    async def wait_for_machine(self, machine: str, after: int, wait_s: float) -> int:
        """Blocking query on one machine's assignments: wait until its change index (State.machine_change_index)
        exceeds ``after`` or ``wait_s`` passes. Parks one future in the machine's registry: a commit that does
        not change this machine does not wake it.

        Returns the index the answer carries: the machine's change index, or ``after`` when that is higher and
        this replica has applied at least to state index ``after``. Why that is exact, and why the index stays
        monotonic for an agent that moves between replicas: a change index is always a value of state.index,
        which every replica computes alike for the same log position (it is in snapshots). An agent's ``after``
        came from some replica's answer, which showed the machine's assignments with every change up to state
        index ``after`` and none after it (a live replica: its last change is <= after; a restored one: its
        floor is its own state.index). So a replica whose state.index >= after and whose change index <= after
        holds those same assignments, and may answer ``after`` (a live replica holds lower values than one that
        restored a snapshot, whose values are its restored index: without this the agent would read the live
        replica's answer as older and take it for a stale replica). A replica behind ``after`` answers its own,
        lower, index: the agent's stale-replica check sees it. Any later change gets a state index above every
        earlier one, so it is never missed."""
        assert self.loop is not None
        deadline = time.monotonic() + wait_s
        while True:
            current, applied = self.read(lambda s: (s.machine_change_index(machine), s.index))
            left = deadline - time.monotonic()
            if current > after or left <= 0:
                return max(current, after) if applied >= after >= 0 else current
            # no await between the read above and the registration: a commit's _notify runs on this loop, after it
            fut: asyncio.Future[None] = self.loop.create_future()
            waiters = self._machine_waiters.setdefault(machine, set())
            waiters.add(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass
            finally:
                waiters.discard(fut)
                if not waiters and self._machine_waiters.get(machine) is waiters:
                    del self._machine_waiters[machine]

    def _on_applied_threadsafe(self) -> None:
        # runs on pysyncobj's tick thread (the only writer of the state): take the machines the entries applied
        # since the last call changed, then hop to the loop, coalescing bursts
        raft = self.raft
        state = raft.state if raft is not None else None
        with self._woken_lock:
            if state is None or state.changed_all:  # a restore (or a load before self.raft is set): all machines
                self._woken_all = True
                if state is not None:
                    state.changed_all = False
                    state.changed_machines = set()
            elif state.changed_machines:
                self._woken |= state.changed_machines
                state.changed_machines = set()
            if self.loop is None or self._notify_pending:
                return
            self._notify_pending = True
        try:
            self.loop.call_soon_threadsafe(self._notify)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _notify(self) -> None:
        with self._woken_lock:  # the flag first: a commit after this takes schedules a new _notify
            self._notify_pending = False
            woken, self._woken = self._woken, set()
            every, self._woken_all = self._woken_all, False
        for machine in (list(self._machine_waiters) if every else woken):
            for fut in self._machine_waiters.get(machine, ()):
                if not fut.done():
                    fut.set_result(None)
                    self.machine_wakes += 1
        assert self._changed is not None
        if not self._blocking_reads:
            # nobody is in wait_for: no task to take the condition's lock (one per applied entry under write load;
            # a wait_for that starts later reads the state this entry is already in)
            return

        async def wake() -> None:
            async with self._changed:  # type: ignore[union-attr]
                self._changed.notify_all()  # type: ignore[union-attr]
        asyncio.ensure_future(wake())

    def _on_raft_state(self, old: int, new: int) -> None:
        self.leader_changes += 1
        self._role = {0: "follower", 1: "candidate", 2: "leader"}.get(new, str(new))
        log.info("replica %s: raft state %s -> %s", self.cfg.node_id, old, new)

    # -- start-up chores -----------------------------------------------------
    async def _bootstrap(self) -> None:
        """Publish this member's API URL and the bootstrap admin token, retrying until done."""
        path = os.path.join(self.cfg.data_dir, "admin-token")
        if os.path.exists(path):
            with open(path) as f:
                token = f.read().strip()
        else:
            token = auth.new_token()
            auth.write_secret_file(path + ".new", token)
            os.replace(path + ".new", path)
        digest = auth.token_hash(token)
        todo = {"member", "token"}
        while todo:
            try:
                if "member" in todo:
                    res = await self.propose(c.SetMember(raft=self.cfg.raft, api=self.cfg.api_url,
                                                         node=self.cfg.node_id))
                    if res.ok:
                        todo.discard("member")
                if "token" in todo:
                    if self.read(lambda s: digest in s.tokens):
                        todo.discard("token")
                    else:
                        res = await self.propose(c.CreateToken(hash=digest, role="admin",
                                                               name=f"bootstrap-{self.cfg.node_id}-{digest[:8]}",
                                                               id=f"bootstrap-{digest[:24]}"))
                        if res.ok or (res.error and res.error.code == "conflict"):
                            todo.discard("token")
                        else:
                            log.warning("bootstrap token rejected: %s", res.error)
                            todo.discard("token")
            except Exception as exc:  # no leader yet, timeouts: keep trying
                log.debug("bootstrap retry: %s", exc)
                await asyncio.sleep(0.3)
        ready = os.path.join(self.cfg.data_dir, "ready")
        with open(ready, "w") as f:
            f.write(self.cfg.api_url + "\n")
        log.info("replica %s ready", self.cfg.node_id)

    # -- status ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.raft is not None
        rs = self.raft.raft_status()
        members_state = self.read(lambda s: {k: dict(v) for k, v in s.members.items()})
        index, epoch, chain, entries = self.read(lambda s: (s.index, s.epoch, s.chain, s.entries))
        members = []
        learners = rs.get("learners") or {}
        addrs = sorted(set(members_state) | {self.cfg.raft} | set(rs["connected"]) | set(rs["match_index"])
                       | set(learners))
        for addr in addrs:
            m = members_state.get(addr, {})
            # a learner is replicated to and counted in no majority until the leader promotes it (membership.py)
            # and this replica is no voter while joining, or once its log removed it
            learner = addr in learners or (addr == self.cfg.raft and bool(rs.get("joining") or rs.get("removed")))
            entry: dict[str, Any] = {"raft": addr, "id": m.get("id"), "api": m.get("api"),
                                     "leader": addr == rs["leader"], "self": addr == self.cfg.raft,
                                     "voter": not learner}
            match = rs["match_index"].get(addr, learners.get(addr))
            if match is not None:
                entry["match_index"] = match
                entry["lag"] = max(0, (rs["commit_index"] or 0) - match)
            if addr in rs["connected"]:
                entry["connected"] = rs["connected"][addr]
            members.append(entry)
        leader_api = members_state.get(rs["leader"] or "", {}).get("api")
        return {
            "node": self.cfg.node_id, "raft": self.cfg.raft, "api": self.cfg.api_url,
            "state": rs["state"], "leader": rs["leader"], "leader_api": leader_api, "term": rs["term"],
            "commit_index": rs["commit_index"], "applied_index": rs["applied_index"],
            "log_len": rs["log_len"], "has_quorum": rs["has_quorum"], "ready": self.raft.is_ready(),
            "index": index, "epoch": epoch, "entries": entries, "chain": chain,
            "members": members, "uptime_s": round(time.time() - self.started_at, 1),
            "election_timeout_s": list(self.election_timeout_s) if self.election_timeout_s else None,
            "state_hash": None, "state_hash_index": None,   # ?hash=1 fills them (api.status, snapshot.state_digest)
            "leadership": self.leadership.status() if self.leadership and self.leadership.active else None,
        }


async def serve(cfg: ServerConfig) -> None:
    """Run a replica until cancelled (SIGINT/SIGTERM)."""
    tune(thresholds_from_env())          # process-wide: only a replica process of its own (gcstats.py)
    tune_switch_interval(switch_interval_from_env())   # the event loop's waits for the GIL (raftctl/gil.py)
    replica = Replica(cfg)
    replica.gc_stats = GcStats().install()
    replica.event_loop = loop_name(asyncio.get_running_loop())
    await replica.start()
    freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("replica %s stopping", cfg.node_id)
    await replica.stop()
