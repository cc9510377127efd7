"""The simulated fleet's cheap parts (issue 15): the sim driver called inline, supervisors that wait for a sim
container's change instead of polling it, one shared pool per process, and the lean HTTP client, against real
aiohttp servers on loopback."""
from __future__ import annotations

import asyncio
import collections
import socket
import threading
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from raftctl.agent.config import AgentConfig
from raftctl.agent.control import CONNECT_S, HEARTBEAT_S, ControlClient, shared_pool
from raftctl.agent.fleet import FLEET_RECONCILE_S, LeanHTTP, machines, run_agents
from raftctl.agent.runtime.base import ContainerSpec
from raftctl.agent.runtime.sim import SimDriver, SimScript
from raftctl.agent.supervisor import Supervised, Supervisor, call_driver
from raftctl.clock import SYSTEM
from raftctl.errors import Unavailable, ValidationError
from tests.agent.conftest import job_spec


# -- a real server on loopback -------------------------------------------------------------------------------
class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.peers: set[Any] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, routes: list[web.RouteDef]) -> "Server":
        app = web.Application()
        app.add_routes(routes)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        s.seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                       "auth": request.headers.get("Authorization"), "ctype": request.headers.get("Content-Type"),
                       "body": body})
        s.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"ok": True, "n": len(s.seen)})

    async def chunked(request: web.Request) -> web.StreamResponse:
        r = web.StreamResponse()
        r.enable_chunked_encoding()
        await r.prepare(request)
        for part in (b'{"a": ', b'[1, 2, 3]', b', "b": "x"}'):
            await r.write(part)
        await r.write_eof()
        return r

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def not_leader(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "not_leader", "message": "not the leader",
                                            "details": {"leader_api": None}}}, status=503)
    await s.start([web.post("/echo", echo), web.get("/echo", echo), web.get("/chunked", chunked),
                   web.get("/slow", slow), web.post("/v1/agent/heartbeat", not_leader)])
    yield s
    await s.stop()


# -- LeanHTTP ------------------------------------------------------------------------------------------------
async def test_lean_sends_what_an_agent_sends_and_keeps_one_connection_alive(server: Server) -> None:
    lean = LeanHTTP()
    for i in range(3):
        status, body = await lean("POST", server.url + "/echo", {"machine": "m-1", "i": i}, {"index": "7", "wait": "10s"},
                                  {"Authorization": "Bearer tok"}, 5.0, 1.0)
        assert status == 200 and body == b'{"ok": true, "n": %d}' % (i + 1)
    assert [s["body"] for s in server.seen] == [b'{"machine": "m-1", "i": %d}' % i for i in range(3)]
    assert {(s["method"], s["path"], s["auth"], s["ctype"]) for s in server.seen} == {
        ("POST", "/echo", "Bearer tok", "application/json")}
    assert server.seen[0]["query"] == {"index": "7", "wait": "10s"}
    assert lean.opened == 1 and len(server.peers) == 1     # keep-alive: one connection for the three


async def test_lean_connects_from_its_source_address(server: Server) -> None:
    """A fleet process given its own loopback address (bench/scale.py: 127.0.K.1) is seen by the server from it,
    so its ports come from that address's range and not the one shared by every other process."""
    lean = LeanHTTP(source="127.0.7.1")
    for _i in range(2):
        status, _ = await lean("GET", server.url + "/echo", None, None, {}, 5.0, 1.0)
        assert status == 200
    assert {p[0] for p in server.peers} == {"127.0.7.1"} and lean.opened == 1


async def test_a_fleet_with_a_source_address_refuses_https_replicas_naming_the_flag(tmp_path: Any) -> None:
    cfg = AgentConfig(machine="g0", servers=["https://127.0.0.1:9"], token="t", data_dir=str(tmp_path))
    with pytest.raises(ValidationError) as exc:
        await run_agents(cfg, 2, source="127.0.7.1", stop=asyncio.Event())
    assert exc.value.field == "--source-address"


async def test_lean_reads_a_chunked_answer_and_a_get_without_body(server: Server) -> None:
    lean = LeanHTTP()
    assert await lean("GET", server.url + "/chunked", None, None, {}, 5.0, 1.0) == (200, b'{"a": [1, 2, 3], "b": "x"}')
    status, _ = await lean("GET", server.url + "/echo", None, None, {}, 5.0, 1.0)
    assert status == 200 and server.seen[-1]["ctype"] is None and server.seen[-1]["body"] == b""
    assert lean.opened == 1


def one_answer_per_connection(answers: int) -> tuple[int, threading.Thread, socket.socket]:
    """A raw listener that answers each connection's first request (keep-alive, by its headers) and then
    closes it, as a server's keep-alive timeout does."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve() -> None:
        for i in range(answers):
            conn, _ = sock.accept()
            conn.recv(10000)
            body = b'{"i": %d}' % i
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            conn.close()
    t = threading.Thread(target=serve)
    t.start()
    return sock.getsockname()[1], t, sock


async def test_lean_replaces_a_connection_the_server_closed_while_idle() -> None:
    port, t, sock = one_answer_per_connection(3)
    lean = LeanHTTP()
    try:
        got = [await lean("POST", f"http://127.0.0.1:{port}/x", {}, None, {}, 5.0, 1.0)]
        await asyncio.sleep(0.1)      # the close arrives while the connection is idle
        got.append(await lean("POST", f"http://127.0.0.1:{port}/x", {}, None, {}, 5.0, 1.0))
        got.append(await lean("POST", f"http://127.0.0.1:{port}/x", {}, None, {}, 5.0, 1.0))   # no pause at all
    finally:
        t.join(5)
        sock.close()
    assert got == [(200, b'{"i": 0}'), (200, b'{"i": 1}'), (200, b'{"i": 2}')] and lean.opened == 3


async def test_lean_bounds_the_exchange_and_refuses_what_is_not_http(server: Server) -> None:
    lean = LeanHTTP()
    with pytest.raises(TimeoutError):
        await lean("GET", server.url + "/slow", None, None, {}, 0.3, 0.3)
    assert lean.idle.get(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), []) == []   # closed, not kept

    # a listener that answers garbage and closes: an OSError, as the ControlClient expects of a failed replica
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]

    def garbage() -> None:
        conn, _ = sock.accept()
        conn.recv(1000)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
        conn.close()
    t = threading.Thread(target=garbage)
    t.start()
    try:
        with pytest.raises(OSError):
            await lean("GET", f"http://127.0.0.1:{port}/x", None, None, {}, 5.0, 1.0)
    finally:
        t.join()
        sock.close()


async def test_lean_counts_each_close_by_why_and_by_replica(server: Server) -> None:
    """The fleet's connection churn names its cause: a request past its bound, a caller that gave up (an
    abandoned watch), a server that closed, a connection that aged out, a replica that did not take it."""
    where = server.url.removeprefix("http://")
    lean = LeanHTTP(idle_s=0.2)
    with pytest.raises(TimeoutError):
        await lean("GET", server.url + "/slow", None, None, {}, 0.2, 0.2)
    waiting = asyncio.create_task(lean("GET", server.url + "/slow", None, None, {}, 5.0, 1.0))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await lean("GET", server.url + "/echo", None, None, {}, 5.0, 1.0))[0] == 200   # kept idle
    await asyncio.sleep(0.3)
    assert (await lean("GET", server.url + "/echo", None, None, {}, 5.0, 1.0))[0] == 200   # the idle one aged out
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))                   # bound, not listening: the connection is refused
    gone = "127.0.0.1:%d" % dead.getsockname()[1]
    with pytest.raises(OSError):
        await lean("GET", f"http://{gone}/x", None, None, {}, 1.0, 1.0)
    dead.close()
    assert dict(lean.closed) == {("timeout", where + " slow"): 1, ("cancelled", where + " slow"): 1,
                                 ("aged", where): 1, ("not opened", gone + " x"): 1}
    assert lean.opened == 4
    line, churn = lean.summary((0, collections.Counter()))
    assert churn and line.startswith("connections opened 4, closed: ") and f"{where} slow timeout 1" in line
    assert lean.summary(lean.mark()) == ("connections opened 0, closed: none", False)


async def test_a_connection_the_server_closed_is_counted_once_as_the_servers() -> None:
    port, t, sock = one_answer_per_connection(2)
    lean = LeanHTTP()
    try:
        await lean("POST", f"http://127.0.0.1:{port}/x", {}, None, {}, 5.0, 1.0)
        await asyncio.sleep(0.1)
        await lean("POST", f"http://127.0.0.1:{port}/x", {}, None, {}, 5.0, 1.0)
    finally:
        t.join(5)
        sock.close()
    assert dict(lean.closed) == {("server", f"127.0.0.1:{port}"): 1}
    assert lean.summary((1, collections.Counter())) == (f"connections opened 1, closed: 127.0.0.1:{port} server 1",
                                                        True)


# -- the shared pool -----------------------------------------------------------------------------------------
async def test_clients_in_a_shared_pool_use_it_with_its_bounds_and_the_lean_client(server: Server) -> None:
    lean = LeanHTTP()
    async with shared_pool(connect_s=7.0, heartbeat_s=9.0, lean=lean) as pool:
        async with ControlClient([server.url], "tok-a") as a, ControlClient([server.url], "tok-b") as b:
            assert (a.connect_s, a.heartbeat_s, b.connect_s) == (7.0, 9.0, 7.0)
            assert await a.request("POST", "/echo", {"x": 1}) == {"ok": True, "n": 1}
            assert await b.request("GET", "/echo", params={"q": "1"}) == {"ok": True, "n": 2}
            with pytest.raises(Unavailable):        # a follower's 503 not_leader, as a real agent meets it
                await a.heartbeat("m-1")
        assert not pool.session.closed             # the clients do not close the pool's session
    assert [s["auth"] for s in server.seen[:2]] == ["Bearer tok-a", "Bearer tok-b"]   # each client its own token
    assert lean.opened == 1                        # one connection for both machines
    async with ControlClient([server.url], "tok") as alone:   # outside the pool: its own session and bounds
        assert (alone.connect_s, alone.heartbeat_s) == (CONNECT_S, HEARTBEAT_S)
        assert await alone.request("POST", "/echo", {}) == {"ok": True, "n": len(server.seen)}


# -- the sim driver inline, and supervisors that wait --------------------------------------------------------
def spec(cid: str) -> ContainerSpec:
    return ContainerSpec(id=cid, job="w", replica=0, image="sha256:" + "0" * 64, rootfs="", command=["w"], log_dir="")


async def test_sim_calls_run_inline_and_real_driver_calls_on_a_thread() -> None:
    drv = SimDriver()
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Threaded(SimDriver):
        inline = False

        def list_existing(self) -> list[str]:
            seen.append(threading.get_ident())
            return super().list_existing()

    class Inline(SimDriver):
        def list_existing(self) -> list[str]:
            seen.append(threading.get_ident())
            return super().list_existing()
    assert await call_driver(Inline().list_existing) == [] and seen == [loop_thread]
    assert await call_driver(Threaded().list_existing) == [] and seen[1] != loop_thread
    await call_driver(drv.create, spec("c1"))
    assert drv.list_existing() == ["c1"]


@pytest.mark.parametrize("change", ["kill", "stop", "remove"])
async def test_a_sim_containers_next_change_is_resolved_by_the_call_that_changes_it(change: str) -> None:
    drv = SimDriver()
    drv.create(spec("c1"))
    drv.start("c1")
    assert drv.quiet("c1")
    fut = drv.next_change("c1")
    drv.status("c1")
    drv.stats("c1")
    drv.healthy("c1")
    await asyncio.sleep(0)
    assert not fut.done()          # reading it changes nothing
    getattr(drv, change)("c1")
    assert fut.done()


def test_a_container_with_a_scripted_change_ahead_is_not_quiet() -> None:
    t = [0.0]
    drv = SimDriver(clock=lambda: t[0], scripts={"crash": SimScript(exit_after_s=2), "slow": SimScript(start_delay_s=1),
                                                 "oom": SimScript(oom_after_s=5)})
    for cid in ("crash", "slow", "oom", "plain"):
        drv.create(spec(cid))
        assert drv.quiet(cid)       # created, not started: only start() changes it
        drv.start(cid)
    assert [drv.quiet(c) for c in ("crash", "slow", "oom", "plain")] == [False, False, False, True]
    t[0] = 3.0
    assert [drv.quiet(c) for c in ("crash", "slow", "oom")] == [True, True, False]   # crash has ended; slow runs


class Counting(SimDriver):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.status_calls = 0

    def status(self, id: str) -> Any:
        self.status_calls += 1
        return super().status(id)


class Reports:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def __call__(self, r: Any) -> None:
        self.got.append(r)

    def exited(self, job: str, oom: bool) -> None: ...

    def restarted(self, job: str) -> None: ...

    def health_checked(self, kind: str, ok: bool, seconds: float) -> None: ...


async def test_a_supervisor_of_a_running_sim_container_waits_instead_of_polling_and_sees_a_kill_at_once() -> None:
    drv = Counting()
    rep = Reports()
    sup = Supervised(placement={"id": "c1", "job": "w", "spec": job_spec(restart={"policy": "never"})})
    s = Supervisor(sup, drv, report=rep, metrics=rep, container_spec=lambda p: spec(p["id"]), host="127.0.0.1",
                   clock=SYSTEM)
    task = asyncio.create_task(s.run(fresh=True))
    try:
        for _ in range(200):
            await asyncio.sleep(0.005)
            if sup.state == "running":
                break
        calls = drv.status_calls
        await asyncio.sleep(0.5)                 # five POLL_S periods: a polling supervisor asks five times more
        assert drv.status_calls == calls
        drv.kill("c1")
        await asyncio.wait_for(task, 2.0)        # policy never: the supervisor ends once it saw the exit
    finally:
        task.cancel()
    assert [(r.state, r.exit_code) for r in rep.got][-1] == ("exited", 137)


async def test_a_supervisor_of_a_scripted_sim_container_still_sees_its_exit() -> None:
    drv = SimDriver(default=SimScript(exit_after_s=0.2, exit_code=3))
    rep = Reports()
    sup = Supervised(placement={"id": "c1", "job": "w", "spec": job_spec(restart={"policy": "never"})})
    s = Supervisor(sup, drv, report=rep, metrics=rep, container_spec=lambda p: spec(p["id"]), host="127.0.0.1")
    await asyncio.wait_for(s.run(fresh=True), 5.0)
    assert [(r.state, r.exit_code) for r in rep.got][-1] == ("exited", 3)


# -- the fleet -----------------------------------------------------------------------------------------------
def test_machines_are_named_id_dash_n_each_with_its_own_sim_driver_and_a_slower_reconcile(tmp_path: Any) -> None:
    cfg = AgentConfig(machine="g0", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path))
    ms = machines(cfg, 3)
    assert [m.cfg.machine for m in ms] == ["g0-0000", "g0-0001", "g0-0002"]
    assert [m.cfg.data_dir for m in ms] == [str(tmp_path / f"000{i}") for i in range(3)]
    assert len({id(m.driver) for m in ms}) == 3 and all(isinstance(m.driver, SimDriver) for m in ms)
    assert {m.reconcile_s for m in ms} == {FLEET_RECONCILE_S}
    assert [m.cfg.machine for m in machines(cfg, 12000)][-1] == "g0-11999"


async def test_a_fleet_registers_and_heartbeats_every_machine_over_a_few_connections(tmp_path: Any) -> None:
    """A loopback server answering the agent endpoints (register, heartbeat with a told interval, an empty
    assignment watch, stats, reports): 20 machines register and heartbeat, over far fewer connections."""
    registered: set[str] = set()
    beats: dict[str, int] = {}
    peers: set[Any] = set()
    requests = [0]

    def peer(request: web.Request) -> None:
        requests[0] += 1
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)

    async def register(request: web.Request) -> web.Response:
        peer(request)
        registered.add((await request.json())["machine"])
        return web.json_response({"ok": True})

    async def heartbeat(request: web.Request) -> web.Response:
        peer(request)
        m = (await request.json())["machine"]
        beats[m] = beats.get(m, 0) + 1
        return web.json_response({"status": "up", "interval_s": 0.2, "ttl_s": 0.6, "epoch": 1})

    async def assignments(request: web.Request) -> web.Response:
        peer(request)
        await asyncio.sleep(min(1.0, float(request.query.get("wait", "1s").rstrip("s"))))
        return web.json_response({"index": 1, "placements": [], "cluster": None})

    async def ok(request: web.Request) -> web.Response:
        peer(request)
        await request.read()
        return web.json_response({"ok": True})
    srv = await Server().start([web.post("/v1/agent/register", register), web.post("/v1/agent/heartbeat", heartbeat),
                                web.get("/v1/agent/assignments/{machine}", assignments),
                                web.post("/v1/agent/stats", ok), web.post("/v1/agent/report", ok)])
    stop = asyncio.Event()
    cfg = AgentConfig(machine="g0", servers=[srv.url], token="t", data_dir=str(tmp_path), heartbeat_s=0.2)
    task = asyncio.create_task(run_agents(cfg, 20, spread_s=0.2, stop=stop))
    try:
        for _ in range(300):
            await asyncio.sleep(0.05)
            if len(registered) == 20 and all(beats.get(f"g0-{i:04d}", 0) >= 3 for i in range(20)):
                break
        assert registered == {f"g0-{i:04d}" for i in range(20)}
        assert all(beats.get(f"g0-{i:04d}", 0) >= 3 for i in range(20)), beats
        # once started, the machines' requests go over the connections the process keeps alive: 1 s of traffic
        # (about 100 heartbeats and 20 watch renewals) opens few (a connection per request before: a session each)
        known, before = set(peers), requests[0]
        await asyncio.sleep(1.0)
        assert requests[0] - before >= 50 and len(peers - known) * 5 <= requests[0] - before, (
            requests[0] - before, len(peers - known))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10.0)
        await srv.stop()


async def test_a_watch_answer_the_same_as_the_last_is_not_decoded_again() -> None:
    answers = [b'{"index": 5, "placements": [{"id": "a"}]}'] * 2 + [b'{"index": 6, "placements": []}',
                                                                     b'{"index": 6, "placements": [1e999]}']

    async def watch(request: web.Request) -> web.Response:
        return web.Response(body=answers.pop(0), content_type="application/json")
    srv = await Server().start([web.get("/w", watch), web.get("/plain", watch)])
    try:
        async with ControlClient([srv.url], "t") as c:
            first, _ = await c.watch("/w", {}, timeout=5.0)
            again, _ = await c.watch("/w", {}, timeout=5.0)
            changed, _ = await c.watch("/w", {}, timeout=5.0)
            assert first == {"index": 5, "placements": [{"id": "a"}]} and again is first
            assert changed == {"index": 6, "placements": []}
            with pytest.raises(Unavailable):        # a changed answer still passes the gate (1e999: infinite)
                await c.watch("/w", {}, timeout=5.0)
            answers[:] = [b'{"x": 1}', b'{"x": 1}']
            one, two = await c.request("GET", "/plain"), await c.request("GET", "/plain")
            assert one == two and one is not two    # only watches are remembered
    finally:
        await srv.stop()


async def test_a_pools_decoder_replaces_the_gate_and_a_bad_answer_still_counts_as_no_answer() -> None:
    from raftctl.agent.fleet import trusted_json
    answers = [b'{"a": 1, "a": 2}', b'{"x": ']

    async def h(request: web.Request) -> web.Response:
        return web.Response(body=answers.pop(0), content_type="application/json")
    srv = await Server().start([web.get("/x", h)])
    try:
        async with shared_pool(lean=LeanHTTP(), decode=trusted_json):
            async with ControlClient([srv.url], "t") as c:
                assert await c.request("GET", "/x") == {"a": 2}    # the gate would refuse the duplicate key
                with pytest.raises(Unavailable, match="not valid JSON"):
                    await c.request("GET", "/x")
        answers.append(b'{"a": 1, "a": 2}')
        async with ControlClient([srv.url], "t") as alone:
            with pytest.raises(Unavailable, match="duplicate key"):
                await alone.request("GET", "/x")
    finally:
        await srv.stop()
