"""The agent's control loop: register, heartbeat, watch assignments, converge, supervise, report.

Desired state comes from the control plane (the machine's placements, through
a blocking query); observed state comes from the runtime driver. The agent
converges one to the other and reports every observed transition, which the
control plane commits. Containers outlive the agent: a new agent on the same
data dir adopts what it finds running instead of restarting it.

This module is the wiring; the parts are tested on their own: ``supervisor.py`` runs one container
(start, watch, health, restart), ``stopping.py`` stops them, ``stats.py`` samples usage for the
autoscaler, ``imagegc.py`` collects unused images, ``converge.py`` decides what to start and stop.
Every loop reads and waits on the injected ``raftctl.clock.Clock``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import signal
from typing import Any

import aiohttp

from raftctl.aio import loop_name
from raftctl.agent import converge
from raftctl.agent.config import AgentConfig
from raftctl.agent.control import BlobFetcher, ControlClient
from raftctl.agent.diskguard import DiskGuard
from raftctl.agent.imagegc import ImageGC, image_digest
from raftctl.agent.logserver import start_log_server
from raftctl.agent.metrics import AgentMetrics
from raftctl.agent.runtime.base import ContainerSpec, Driver, ImageNotPushed, Observed, RuntimeError_
from raftctl.agent.stats import StatsPass
from raftctl.agent.stopping import Stopper
from raftctl.agent.supervisor import DriverTimeout, Supervised, Supervisor, update
from raftctl.agent.supervisor import call_driver as _call
from raftctl.agent.trace import StartTrace
from raftctl.agent.watchtarget import SHUN_S, WatchTarget, follower_grace
from raftctl.aio import first_of, unless
from raftctl.clock import SYSTEM, Clock
from raftctl.errors import Forbidden, RaftctlError, Unauthorized
from raftctl.statemachine.records import JobSpec, Report, ReportUpdate, to_wire

log = logging.getLogger("raftctl.agent")

__all__ = ["Agent", "DriverTimeout", "Supervised", "run_agent", "watch_wait"]

WATCH_HEARTBEATS = 10
WATCH_WAIT_MAX_S = 120.0
REPORT_CHUNK = 1000
"""Most updates one POST /v1/agent/report carries (records.Report's bound: the API refuses a longer body)."""
HEARTBEAT_MAX_S = 60.0
"""The longest heartbeat interval an agent follows, whatever the control plane answers."""
NETWORK_REASSERT_S = 30.0   # an unchanged network is handed to the driver again this often (routes deleted behind
                            # the agent's back come back), on the reconcile loop


class Agent:
    def __init__(self, cfg: AgentConfig, driver: Driver, *, rng: random.Random | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.driver = driver
        self.rng = rng or random.Random()
        self.clock: Clock = clock or SYSTEM   # every loop's, supervisor's and stop's time
        self.containers: dict[str, Supervised] = {}
        self.reports: list[ReportUpdate] = []   # transitions not delivered yet, oldest first
        self._report_wake = asyncio.Event()
        self.control: ControlClient | None = None
        self.index = 0
        self.machine_status = "unknown"
        self.http: aiohttp.ClientSession | None = None
        self._converge_lock = asyncio.Lock()
        self._settler: asyncio.Task[None] | None = None   # the stops half of the watch's passes (_settle_soon)
        self._settle_again = False
        self._settle_began = 0
        self.metrics = AgentMetrics(self)
        # the last assignment answer, specs as JobSpec records (None before the first)
        self.placements: list[dict[str, Any]] | None = None
        self.refused: set[str] = set()   # assigned placements whose spec did not convert, already reported
        self.spec_records: dict[str, Any] = {}   # the last answer's specs: job@version -> (wire form, JobSpec)
        self.stopper = Stopper(driver, self.containers, self._report, self.clock)
        self.stats = StatsPass(driver, self.containers, self.clock)
        self.image_gc = ImageGC(driver, self.containers, cfg.image_gc_after_s, self.clock)
        # disk pressure: only for a driver whose containers write to this machine's disk (not the sim driver)
        self.disk: DiskGuard | None = None
        if type(driver).writable_paths is not Driver.writable_paths:
            self.disk = DiskGuard(driver.writable_paths, self.containers, cfg.data_dir, cfg.disk_reserve, self.clock,
                                  every_s=cfg.disk_check_s,
                                  on_evict=lambda sup, _: self.metrics.disk_evicted(str(sup.placement.get("job", ""))))
        self.watch_server: str | None = None      # the replica the assignment watch is parked on
        self.target = WatchTarget(cfg.machine, self.clock)   # which replica that is, fenced by the leader's word
        self.reconcile_s = 1.0                    # level-triggered pass over the driver's containers
        self.trace = StartTrace.from_env(self.clock)   # each start's steps, when RAFTCTL_START_TRACE names a file
        self._answered_ms = 0                     # when the last assignment answer arrived (for the trace)
        self.existing: set[str] | None = None     # the driver's containers at its last listing
        self.network: dict[str, Any] | None = None   # the last answer's network
        self._network_ok_at: float | None = None     # when the driver took it (monotonic); None: not yet, or it failed
        self._network_failing = False                # the last hand-over failed (logged as a warning once)
        self.heartbeat_s = cfg.heartbeat_s         # the interval followed: the leader's answer, bounded
        self.pending_stats: list[dict[str, Any]] | None = None   # the stats pass's latest samples, for the next heartbeat
        self.event_loop: str | None = None        # set by run(): uvloop or asyncio (raftctl.aio.run)
        self._stats_posts: set[asyncio.Task[None]] = set()    # samples posted on their own to an older leader

    # -- lifecycle -------------------------------------------------------
    async def run(self) -> None:
        self.event_loop = loop_name(asyncio.get_running_loop())
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        ssl_ctx = None
        if self.cfg.tls_ca or any(s.startswith("https://") for s in self.cfg.servers):
            from raftctl.tls import client_context

            ssl_ctx = client_context(self.cfg.tls_ca)
        connector = aiohttp.TCPConnector(ssl=ssl_ctx) if ssl_ctx is not None else None
        # image blobs are pulled from the control replicas (on the driver's worker thread), by a driver that pulls
        self.driver.use_image_source(BlobFetcher(self.cfg.servers, self.cfg.token, ssl_context=ssl_ctx))
        async with ControlClient(self.cfg.servers, self.cfg.token, ssl=ssl_ctx) as control, \
                aiohttp.ClientSession(connector=connector) as http:
            self.control, self.http = control, http
            runner = await start_log_server(self, self.clock)
            log.info("agent %s: endpoint %s (GET /metrics, GET /v1/logs/<placement>; bearer token)",
                     self.cfg.machine, self.cfg.api)
            await self._adopt()
            await self._register()
            tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                     asyncio.create_task(self._watch_loop(), name="watch"),
                     asyncio.create_task(self._report_loop(), name="report"),
                     asyncio.create_task(self.stats.run(self._offer_stats), name="stats"),
                     asyncio.create_task(self.image_gc.run(), name="image-gc"),
                     asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                     *([asyncio.create_task(self.disk.run(), name="disk")] if self.disk is not None else [])]
            try:
                await asyncio.gather(*tasks)
            finally:
                await runner.cleanup()
                for t in [*tasks, *self._stats_posts, *([self._settler] if self._settler else [])]:
                    t.cancel()
                for s in self.containers.values():
                    if s.task:
                        s.task.cancel()  # containers keep running; a new agent adopts them

    async def _register(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.control.request("POST", "/v1/agent/register", self.cfg.registration())  # type: ignore[union-attr]
                log.info("registered machine %s (%s)", self.cfg.machine, self.cfg.address)
                return
            except (Unauthorized, Forbidden):
                raise
            except RaftctlError as exc:
                log.warning("register failed: %s; retrying", exc)
            await self.clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _adopt(self) -> None:
        """Containers that survived an agent restart: supervise them without restarting."""
        self.existing = set(await _call(self.driver.list_existing))
        for cid in sorted(self.existing):
            obs: Observed = await _call(self.driver.status, cid)
            if obs.state == "running":
                log.info("adopting running container %s (pid %s)", cid, obs.pid)
                self.containers[cid] = Supervised(placement={"id": cid}, state="running", pid=obs.pid)
            else:
                await _call(self.driver.remove, cid)
                self.existing.discard(cid)

    # -- heartbeats --------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Heartbeat at the interval the leader answers (its heartbeat budget: the interval grows with the
        fleet), bounded by ``followed_interval``; the stats pass stretches with it. The first heartbeat, and the
        next one after the interval changed, come after a random part of the interval (registering counted as
        one; ``first_wait``), so agents started together, or told a new interval together, do not beat in phase. A failed one is
        tried again after half the interval (at least the agent's own): two more tries within the TTL.

        The stats pass's latest samples ride on the next heartbeat (``_ride_stats``): one request to the leader
        where there were two."""
        delay = self.rng.uniform(0, self.heartbeat_s)
        while True:
            await self.clock.sleep(delay)
            stats, self.pending_stats = self.pending_stats, None
            try:
                ans = await self.control.heartbeat(self.cfg.machine, stats)  # type: ignore[union-attr]
            except (Unauthorized, Forbidden):
                raise
            except Exception as exc:
                log.info("heartbeat failed: %s", exc)   # its samples are dropped: the next pass has fresher ones
                delay = max(self.cfg.heartbeat_s, self.heartbeat_s / 2)
                continue
            delay = self.heartbeat_s
            self.target.note(ans.get("assignments_index") if isinstance(ans, dict) else None)
            if stats:
                self._ride_stats(stats, ans)
            interval = followed_interval(ans.get("interval_s") if isinstance(ans, dict) else None,
                                         self.cfg.heartbeat_s)
            if interval is None:
                log.warning("heartbeat answer's interval_s %r is not a positive number of seconds; keeping %gs",
                            ans.get("interval_s") if isinstance(ans, dict) else ans, self.heartbeat_s)
            elif interval != self.heartbeat_s:
                log.info("heartbeat interval %gs -> %gs (told %r, ttl %r)", self.heartbeat_s, interval,
                         ans.get("interval_s"), ans.get("ttl_s"))
                delay = first_wait(self.heartbeat_s, interval, self.rng)
                self.heartbeat_s = interval
                self.stats.follow_heartbeat(interval)
            status = ans.get("status") if isinstance(ans, dict) else None
            try:
                if status != "up":
                    log.warning("control plane has machine %s as %s; re-registering", self.cfg.machine, status)
                    await self._register()
                self.machine_status = "up"
            except (Unauthorized, Forbidden):
                raise
            except Exception as exc:
                log.info("re-registering failed: %s", exc)

    # -- assignments -------------------------------------------------------
    async def _watch_loop(self) -> None:
        """The blocking assignment watch, parked on a follower chosen by the machine's hash (watchtarget.py; on
        the leader when the leader does not tell its ``assignments_index``, or no follower is left).

        A parked watch is abandoned and issued again when the choice moves with the leader, or when the leader's
        heartbeat answers have told a change it did not bring within the grace: a paused or cut-off replica
        must not hold the agent's stops for the watch's whole wait (jepsen-style finding 4).

        The first watch waits for the first heartbeat's answer (it comes within one interval of the start), at
        most two intervals: sent before it, the watch went to the replicas in turn and was abandoned once the
        answer named the leader, one wasted connection and parked watch per machine (50 a second on one
        follower while the 10,000-machine bed registered)."""
        control = self.control
        assert control is not None
        if control.live is None:
            await first_of(control.live_moved_from(None), self.clock.sleep(2 * self.cfg.heartbeat_s))
        while True:
            live = control.live
            target = self.target.choose(control.servers, live)
            if target is not None and target != self.watch_server:
                log.info("assignment watch on %s", target)   # where it is parked (the rotation: once answered)
                self.watch_server = target
            wait_s = watch_wait(self.heartbeat_s)
            watch = await unless(control.watch(
                f"/v1/agent/assignments/{self.cfg.machine}",
                {"index": str(self.index), "wait": f"{wait_s:g}s", "specs": "ref"},   # each job version's spec once
                timeout=wait_s + 10.0, server=target), self._leave(target, live))
            if watch is None:
                continue
            try:
                ans, server = watch.result()
                if server != self.watch_server:
                    log.info("assignment watch on %s", server)
                    self.watch_server = server
                if target is not None and server != target:
                    self.target.shun(target)     # it did not answer: the client asked the others in turn
                if ans["index"] < self.index and server != control.live:
                    # A replica cut off from the others answers a timed-out watch with its old state: acting on
                    # it would start placements that were stopped since (and, parked there, keep them running).
                    log.warning("assignment answer from %s is at index %s, behind the %s already seen: a stale "
                                "replica; asking another", server, ans["index"], self.index)
                    control.avoid(server)
                    self.target.shun(server)
                    await self.clock.sleep(0.5)
                    continue
                self.index = ans["index"]
                self._answered_ms = self.clock.now_ms() if self.trace.on else 0
                if ans.get("network") is not None and (ans["network"] != self.network or self._network_ok_at is None):
                    # host-gw routes and subnets before any bridge container; the same network again is not
                    # handed over on the start's path (a netlink socket and a route per peer, 4 ms of a worker
                    # thread on every answer) but every NETWORK_REASSERT_S by the reconcile loop
                    await self._configure_network(ans["network"])
                # the starts now; the stops (a listing of the driver's containers first) on their own, so the
                # next watch is parked at once: behind the listing (20-50 ms under load, and the reconcile pass
                # holds the lock through one every second) the next job's Plan reached the agent 16.5-17.5 ms
                # after it was proposed, where a parked watch answers in ~4 (bench/container_start.py)
                self._settle_soon(self._take(ans["placements"], ans.get("specs")))
            except (Unauthorized, Forbidden):
                raise
            except Exception as exc:
                log.info("assignment watch failed: %s", exc)
                await self.clock.sleep(0.5)

    async def _leave(self, target: str | None, live: str | None) -> None:
        """Return when the watch parked on ``target`` (chosen while ``live`` answered heartbeats) is to be left."""
        control = self.control
        assert control is not None

        async def choice_moved() -> None:
            # the choice moves with the leader, and once the leader tells the index: a watch parked on the leader
            # (or in turn) before any heartbeat told it, as an agent's first watch is, then moves to its follower.
            # A watch parked on a follower that still is one stays until it answers (the next one goes where the
            # choice says): the choice hashes over the followers, and a new leader changed it for about half the
            # machines, which left healthy watches for a replica often dead (the old leader), 21,594 in two
            # minutes after the 10,000-machine bed's leader kill
            seen = live
            while True:
                if self.target.told is None:
                    await first_of(control.live_moved_from(seen), self.target.telling())
                else:
                    await control.live_moved_from(seen)
                seen = control.live
                now = self.target.choose(control.servers, seen)
                on_a_follower = target is not None and target not in (live, seen) and self.target.told is not None
                if now != target and not on_a_follower:
                    log.info("assignment watch on %s abandoned: heartbeats are answered by %s (index told: %s), "
                             "watch on %s", target or "a rotating replica", seen, self.target.told, now)
                    return

        async def follower_behind() -> None:
            grace = follower_grace(self.heartbeat_s)
            told = await self.target.leader_ahead(self.index, grace)
            log.warning("assignment watch on %s abandoned: the leader has this machine's assignments at index %s, "
                        "the watch brought %s within %gs; passed over for %gs", target, told, self.index,
                        grace, SHUN_S)
            assert target is not None
            self.target.shun(target)

        if target is None or target == live:
            await choice_moved()
        else:
            await first_of(choice_moved(), follower_behind())

    async def converge(self, placements: list[dict[str, Any]], specs: Any = None) -> None:
        """An assignment answer (the placements as the control plane sent them, and its ``specs`` map when the
        control plane sends each job version's spec once): each spec becomes its JobSpec record here, once per
        job version (and not again while the next answers carry it unchanged), and then one pass. A placement
        whose spec does not convert, or whose ``spec_ref`` names no spec, is not started: it is logged and
        reported "exited" once, its reason naming the field. The whole pass, awaited; the watch loop runs its
        two halves apart (``_take``, then ``_settle_soon``)."""
        await self._settle(self._take(placements, specs), report=True)

    def _take(self, placements: list[dict[str, Any]], specs: Any = None) -> int:
        """The half of an answer's pass that never awaits: the specs converted, refused placements reported,
        the assignment kept and what it adds started. Returns when the pass began (wall ms, for the trace)."""
        assigned, refused = converge.typed(placements, specs, known=self.spec_records)
        reported: set[str] = set()
        for p in assigned:
            pid = p["id"]
            if pid not in refused:
                continue
            if pid in self.refused:
                reported.add(pid)
            elif converge.wanted(p) and pid not in self.containers:   # one it would have started
                log.error("placement %s (job %s version %s) not started: its spec does not convert: %s",
                          pid, p.get("job"), p.get("version"), refused[pid])
                self._report(update(pid, "exited", reason=f"start failed: its spec does not convert: {refused[pid]}"))
                reported.add(pid)
        self.refused = reported
        return self._take_typed(assigned)

    async def converge_typed(self, placements: list[dict[str, Any]], *, report: bool = True) -> None:
        """One level-triggered pass over the assignment (specs as records, converge.typed): compare it with the
        supervised containers, the containers the driver reports and the stops in flight, and act on the
        difference.

        Starts come first and take no lock: what to start does not depend on the driver's listing (a `runc list`,
        20-50 ms under load), and a start must not wait behind another pass that awaits its listing (the
        reconcile pass holds the lock through one every second). Starting awaits nothing, so it is never half
        done when another pass looks. The stops are decided under the lock on a fresh listing, against the
        latest assignment (another may have arrived while the listing ran)."""
        await self._settle(self._take_typed(placements), report=report)

    def _take_typed(self, placements: list[dict[str, Any]]) -> int:
        began_ms = self.clock.now_ms() if self.trace.on else 0
        self.placements = placements
        self.image_gc.note_assignment(placements)
        self._start_new(placements, began_ms)
        return began_ms

    async def _settle(self, began_ms: int, *, report: bool) -> None:
        """The stops half of a pass, under the lock, on a fresh listing, against the latest assignment."""
        async with self._converge_lock:
            existing = await self._observe()
            placements = self.placements or []
            by_id = {p["id"]: p for p in placements}
            actions = converge.plan(placements, set(self.containers), existing=existing or set(),
                                    stopping=self.stopper.in_flight())
            if existing is not None:   # failed stops of containers that are gone since: forget them
                self.stopper.forget_gone(existing)
            for p in actions.start:    # none unless a start was held back since _start_new
                self._start_one(p, began_ms)
            for cid in actions.stop:
                self.stopper.stop(cid, by_id.get(cid))
            for cid in actions.retry:
                self.stopper.retry(cid, by_id.get(cid))
            if report:
                for pid in actions.report_stopped:
                    self._report(update(pid, "stopped", reason="not running on this machine"))

    def _settle_soon(self, began_ms: int) -> None:
        """Run ``_settle`` for the latest assignment on the one settle task (started when none runs); asked
        again while it runs, it runs once more after, against the assignment as it is then."""
        self._settle_began = began_ms
        self._settle_again = True
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_answers(), name="settle")

    async def _settle_answers(self) -> None:
        while self._settle_again:
            self._settle_again = False
            try:
                await self._settle(self._settle_began, report=True)
            except Exception as exc:   # supervised: the next answer or the reconcile pass tries again
                log.warning("converge pass failed: %s", exc)

    def _start_new(self, placements: list[dict[str, Any]], began_ms: int) -> None:
        """Supervise what the assignment adds (never awaits)."""
        by_id = {p["id"]: p for p in placements}
        # adopted containers learn their placement records (a placement without a spec leaves its container
        # running unsupervised)
        for cid, sup in self.containers.items():
            if cid in by_id and "job" not in sup.placement and not sup.stopping and by_id[cid]["spec"] is not None:
                sup.placement = by_id[cid]
                sup.task = asyncio.create_task(self._supervise(sup, adopted=True), name=f"sup-{cid}")
        for p in converge.plan(placements, set(self.containers), stopping=self.stopper.in_flight()).start:
            self._start_one(p, began_ms)

    def _start_one(self, p: dict[str, Any], began_ms: int) -> None:
        if self.trace.on:
            self.trace(p["id"], "assigned", self._answered_ms)
            self.trace(p["id"], "converge", began_ms)
        sup = Supervised(placement=p)
        self.containers[p["id"]] = sup
        # fresh: no container of this id in the last listing. Only a supervisor creates one, and a placement is
        # started once, so it cannot have appeared since.
        fresh = self.existing is not None and p["id"] not in self.existing
        sup.task = asyncio.create_task(self._supervise(sup, fresh=fresh), name=f"sup-{p['id']}")

    async def _observe(self) -> set[str] | None:
        """The containers the driver holds (running or not), kept as ``existing``; None if it did not answer in
        time."""
        try:
            self.existing = set(await _call(self.driver.list_existing))
            return self.existing
        except Exception as exc:
            log.warning("listing containers failed: %s", exc)
            return None

    async def _configure_network(self, network: dict[str, Any]) -> None:
        """Hand the assignment's network to the driver. A failure is logged (the first of a run of them as a
        warning): containers start anyway, and the reconcile loop tries again on its next pass."""
        self.network, self._network_ok_at = network, None
        try:
            await _call(self.driver.configure_network, network)
        except Exception as exc:
            log.log(logging.DEBUG if self._network_failing else logging.WARNING,
                    "network configuration failed: %s; containers start anyway", exc)
            self._network_failing = True
            return
        if self.network is network:   # not replaced by a newer answer's meanwhile
            self._network_ok_at, self._network_failing = self.clock.monotonic(), False

    async def _reassert_network(self) -> None:
        """The reconcile loop's part for the network: the last one again, when the driver refused it or took it
        NETWORK_REASSERT_S ago."""
        ok_at = self._network_ok_at
        if self.network is not None and (ok_at is None or self.clock.monotonic() - ok_at >= NETWORK_REASSERT_S):
            await self._configure_network(self.network)

    async def _reconcile_loop(self) -> None:
        """Converge against the last assignment every ``reconcile_s``, between assignment answers, so a
        stop that failed, hung or was undone by a late start is noticed within a second or two; and hand the
        last network to the driver again every NETWORK_REASSERT_S."""
        while True:
            await self.clock.sleep(self.reconcile_s)
            await self._reassert_network()
            if self.placements is None:
                continue  # before the first assignment answer adopted containers are left alone
            try:
                await self.converge_typed(self.placements, report=False)
            except Exception as exc:
                log.warning("reconcile pass failed: %s", exc)

    # -- one container -------------------------------------------------------
    def _container_spec(self, p: dict[str, Any]) -> ContainerSpec:
        """Runs on a worker thread: a driver that runs containers in their image's root pulls and unpacks it here."""
        spec: JobSpec = p["spec"]
        digest = image_digest(p)
        try:
            rootfs = self.driver.image_root(spec.image, digest)
        except ImageNotPushed as exc:
            raise RuntimeError_(
                f"{exc} (job {p['job']} version {p['version']} was submitted before it was): "
                f"raftctl image build DIR --name {spec.image}, then raftctl job run again") from None
        return ContainerSpec.from_placement(p, spec, rootfs=rootfs, image=digest,
                                            log_dir=os.path.join(self.cfg.data_dir, "logs", p["id"]))

    def _supervise(self, sup: Supervised, adopted: bool = False, fresh: bool = False) -> Any:
        """The coroutine that runs one container (supervisor.py): adopted ones are watched, not started; a fresh
        one (the driver held none of its id) is created without removing first."""
        return Supervisor(sup, self.driver, report=self._report, metrics=self.metrics,
                          container_spec=self._container_spec, host=self.cfg.address, clock=self.clock,
                          rng=self.rng, trace=self.trace).run(adopted, fresh=fresh)

    async def _offer_stats(self, stats: list[dict[str, Any]]) -> None:
        """The stats pass's samples: sent on the next heartbeat (replacing any it has not sent yet)."""
        self.pending_stats = stats

    def _ride_stats(self, stats: list[dict[str, Any]], ans: Any) -> None:
        """After a heartbeat that carried ``stats``: a leader that took them says ``stats_accepted`` (and names the
        refused field in ``stats_error``: logged, the samples dropped; the heartbeat counted); one of the previous
        release ignores them, and they are posted to /v1/agent/stats on their own, as before."""
        if isinstance(ans, dict) and "stats_accepted" in ans:
            err = ans.get("stats_error")
            if err:
                log.warning("the leader refused %d usage samples: %s: %s", len(stats),
                            err.get("field") if isinstance(err, dict) else None,
                            err.get("message") if isinstance(err, dict) else err)
            return
        task = asyncio.create_task(self._send_stats(stats), name="stats-post")
        self._stats_posts.add(task)
        task.add_done_callback(self._stats_posts.discard)

    async def _send_stats(self, stats: list[dict[str, Any]]) -> None:
        try:
            await self.control.request("POST", "/v1/agent/stats",  # type: ignore[union-attr]
                                       {"machine": self.cfg.machine, "stats": stats})
        except Exception as exc:     # dropped: the next pass has fresher figures
            log.debug("stats report failed: %s", exc)

    # -- reports -------------------------------------------------------------
    def _report(self, r: ReportUpdate) -> None:
        self.reports.append(r)
        self._report_wake.set()

    async def _report_loop(self) -> None:
        """Deliver the pending transitions in order, at most ``REPORT_CHUNK`` per request; a chunk that was not
        delivered goes back ahead of the rest and is sent again after a pause."""
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            # converge re-reports "stopped" for a placement on every pass until that report commits: 10,000+
            # copies of ~40 reports queued during a 35 s isolation in seed 3's replay (jepsen-style finding 9)
            self.reports = unrepeated(self.reports)
            while self.reports:
                batch, self.reports = self.reports[:REPORT_CHUNK], self.reports[REPORT_CHUNK:]
                body = to_wire(Report(machine=self.cfg.machine, updates=tuple(batch)))
                self._trace_reports("report_sent", batch)
                try:
                    await self.control.request("POST", "/v1/agent/report", body)  # type: ignore[union-attr]
                    self._trace_reports("report_done", batch)
                except (Unauthorized, Forbidden):
                    raise
                except Exception as exc:
                    if isinstance(exc, RaftctlError) and 400 <= (exc.http_status or 0) < 500:
                        # refused for what it holds (a bug, never a fault): sent again it would be refused again
                        # and hold back every later transition
                        log.error("report of %d updates refused (%s); dropped", len(batch), exc)
                        continue
                    log.info("report failed (%s); will retry", exc)
                    self.reports = batch + self.reports
                    await self.clock.sleep(0.5)
                    self._report_wake.set()
                    break

    def _trace_reports(self, step: str, batch: list[ReportUpdate]) -> None:
        if self.trace.on:
            for r in batch:
                self.trace(r.placement, f"{step}:{r.state}/{r.health}")


def followed_interval(told: Any, minimum: float, maximum: float = HEARTBEAT_MAX_S) -> float | None:
    """The heartbeat interval to follow from an answer's ``interval_s``: bounded to ``[minimum, maximum]`` (the
    agent's own interval is its floor); None when it is not a finite number above 0 (kept as it was)."""
    if isinstance(told, bool) or not isinstance(told, (int, float)) or not math.isfinite(told) or told <= 0:
        return None
    return float(min(max(told, minimum), max(minimum, maximum)))


def first_wait(previous: float, interval: float, rng: random.Random) -> float:
    """The wait before the first heartbeat at a new interval: a random part of it, so agents told a new interval
    together do not beat in phase; when it grew, never less than the previous interval. A fleet that grows has its
    interval grow in small steps (at 500 heartbeats/s, 0.1 s per 50 machines): a wait anywhere in the new
    interval made each step a heartbeat after half an interval on average, and the 10,000-machine bed's leader
    got 847-867 heartbeats/s against a budget of 500 (session 22)."""
    return rng.uniform(previous if interval > previous else 0.0, interval)


def watch_wait(heartbeat_s: float) -> float:
    """How long a parked assignment watch waits for a change: WATCH_HEARTBEATS heartbeat intervals, 10 s at
    the default 1 s and never more than WATCH_WAIT_MAX_S. A renewal that found nothing costs the leader a full
    answer (every placement of the machine with its spec) and the agent its decoding: 10,000 machines renewing
    every 10 s were 1,000 such answers a second while the heartbeat budget held heartbeats to 2,000. A watch
    parked on a replica that stops answering heartbeats is abandoned at once (_watch_loop), not after it."""
    return min(WATCH_WAIT_MAX_S, max(10.0, WATCH_HEARTBEATS * heartbeat_s))


def unrepeated(reports: list[ReportUpdate]) -> list[ReportUpdate]:
    """The reports in order, one dropped when the last one kept for its placement says the same (so running,
    exited, running stays whole: the exit before a restart is an event of its own)."""
    last: dict[str, ReportUpdate] = {}
    out = []
    for r in reports:
        if last.get(r.placement) != r:
            last[r.placement] = r
            out.append(r)
    return out


async def run_agent(cfg: AgentConfig, driver: Driver) -> None:
    agent = Agent(cfg, driver)
    task = asyncio.create_task(agent.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done, _ = await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    if task in done and task.exception() if not task.cancelled() else False:
        raise task.exception()  # type: ignore[misc]
