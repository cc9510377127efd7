"""Committed writes/s and latency through the HTTP API, beside etcd 3.4 and bare pysyncobj, in one run.

Systems, each with 3 members on loopback and data in a temp dir on the same disk:
- raftctl: three `raftctl server` processes (durable journal, fsync'd), clients scaling jobs
  (POST /v1/jobs/b<i>/scale);
- etcd 3.4 (Debian `etcd-server`, default fsync), clients putting keys (POST /v3/kv/put, the JSON gateway);
- bare pysyncobj: a replicated counter, pipelined on the leader (in-memory journal): the Raft library's ceiling;
- a bare aiohttp handler: the Python client's and aiohttp's ceiling on this machine.

Two load generators against raftctl and etcd alike:
- the same Python client (aiohttp, N keep-alive clients, client i on member i % 3, so two thirds of
  writes are forwarded by a follower);
- wrk (C) with a Lua script posting the same bodies: one wrk process per member, N/3 connections each,
  so the Python client is not the ceiling. Rates add up; p99 is the worst of the three processes.

Every process and temp dir is cleaned up. Prints human figures and one JSON line; ratios are raftctl / etcd.
Without etcd or wrk installed (`make bench-deps` installs both as root on Debian) those parts print n/a.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Any, Callable

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.aio import event_loop_from_env  # noqa: E402
from raftctl.devcluster import LocalCluster, free_port  # noqa: E402

BARE = textwrap.dedent("""
    import sys, time, threading
    from pysyncobj import SyncObj, SyncObjConf, replicated
    class Counter(SyncObj):
        def __init__(self, me, peers):
            super().__init__(me, peers, SyncObjConf())
            self.n = 0
        @replicated
        def inc(self):
            self.n += 1
            return self.n
    me, peers, role, seconds = sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])
    c = Counter(me, peers)
    while c._getLeader() is None:
        time.sleep(0.05)
    if not c._isLeader():
        time.sleep(seconds + 30); sys.exit(0)
    done = [0]; lock = threading.Semaphore(20000)
    def cb(res, err):
        if err == 0: done[0] += 1
        lock.release()
    t0 = time.time()
    while time.time() - t0 < 1.0:
        lock.acquire(); c.inc(callback=cb)
    start, d0 = time.time(), done[0]
    while time.time() - start < seconds:
        lock.acquire(); c.inc(callback=cb)
    el = time.time() - start
    print("RATE", (done[0] - d0) / el, flush=True)
""")


BARE_HTTP = textwrap.dedent("""
    import sys
    from aiohttp import web
    async def scale(request):
        await request.read()
        return web.json_response({"index": 1, "name": "b", "replicas": 1, "previous": 0})
    app = web.Application()
    app.router.add_post("/v1/jobs/{name}/scale", scale)
    app.router.add_put("/v1/jobs/{name}", scale)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""")

# One request per call, taken round-robin from the (path, body) lines of the file the bench names in args[2]
# (path, a tab, the body). Read at init: written into the script as a table, 30,000 machines' heartbeats (90,000
# rows) did not load ("main function has more than 65536 constants", LuaJIT's bound) and wrk posted to "/" instead:
# the heartbeat ceiling at 30,000 counted every answer non-2xx.
WRK_LUA = textwrap.dedent("""
    local reqs = {}
    local i = 0
    init = function(args)
      i = tonumber(args[1]) or 0
      for line in io.lines(args[2]) do
        local tab = line:find("\\t", 1, true)
        reqs[#reqs + 1] = {line:sub(1, tab - 1), line:sub(tab + 1)}
      end
    end
    request = function()
      i = i + 1
      local r = reqs[i % #reqs + 1]
      return wrk.format("POST", r[1], nil, r[2])
    end
""")

Request = Callable[[int, int], tuple[str, dict[str, Any]]]   # (client, n) -> (path, JSON body)


def raftctl_request(i: int, n: int) -> tuple[str, dict[str, Any]]:
    return f"/v1/jobs/b{i}/scale", {"replicas": n % 3}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def etcd_request(i: int, n: int) -> tuple[str, dict[str, Any]]:
    return "/v3/kv/put", {"key": b64(f"b{i}"), "value": b64(str(n % 3))}


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes ``pids`` have used so far."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / hz
    return total


def with_cpu(run: Callable[[], dict[str, Any] | None], pids: list[int]) -> dict[str, Any] | None:
    """Run one load and add the members' CPU per committed write (ms), a figure a busy machine shifts far
    less than writes/s: each system's members share the same two cores with everything else running."""
    before = proc_cpu(pids)
    out = run()
    used = proc_cpu(pids) - before
    if out is not None:
        writes = out.pop("_writes")
        out["cpu_ms_per_write"] = round(used * 1000 / writes, 3) if writes else None
        out["members_cpu_cores"] = used / out.pop("_wall")
    return out


def pct(xs: list[float], q: float) -> float | None:
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000 if xs else None


async def http_load(urls: list[str], headers: dict[str, str], request: Request, seconds: float, clients: int,
                    setup: Callable[[aiohttp.ClientSession], Any] | None = None) -> dict[str, Any]:
    """N keep-alive clients, client i on urls[i % len(urls)], each posting request(i, n) in a loop; the first
    second is warm-up. Writes/s counts answered 200s after the warm-up."""
    lat: list[float] = []
    errors = 0
    answered = 0  # 200s including the warm-up (for with_cpu)
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=clients * 2)) as s:
        if setup:
            await setup(s)
        stop_at = time.monotonic() + seconds
        warm_until = time.monotonic() + 1.0

        async def worker(i: int) -> None:
            nonlocal errors, answered
            n = 0
            url = urls[i % len(urls)] if not LEADER_ONLY else urls[0]
            while time.monotonic() < stop_at:
                n += 1
                path, body = request(i, n)
                t0 = time.monotonic()
                async with s.post(url + path, json=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                answered += 1
                if t0 > warm_until:
                    lat.append(time.monotonic() - t0)

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.monotonic() - started
    lat.sort()
    # _seconds/_wall: for with_cpu (all answered writes over the whole run, warm-up included)
    return {"writes_per_s": len(lat) / (seconds - 1.0), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "errors": errors, "samples": len(lat), "_writes": answered, "_wall": wall}


def raftctl_setup(clients: int) -> Callable[[aiohttp.ClientSession], Any]:
    async def setup(s: aiohttp.ClientSession) -> None:
        spec = {"image": "bench:1", "command": ["sleep", "1"], "replicas": 0}
        for i in range(clients):
            async with s.put(f"{URLS[0]}/v1/jobs/b{i}", json={**spec, "name": f"b{i}"}) as r:
                assert r.status == 200, await r.text()
    return setup


URLS: list[str] = []
LEADER_ONLY = os.environ.get("LEADER_ONLY") == "1"


# -- wrk ---------------------------------------------------------------------------------------------------------
def _wrk_ms(out: str, label: str) -> float | None:
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else None


def wrk_load(urls: list[str], headers: dict[str, str], request: Request, seconds: int, clients: int,
             keys: int) -> dict[str, Any] | None:
    """One wrk process per member (1 thread, clients/len(urls) connections), all at once, posting the bodies of
    ``request`` round-robin. Rates add up; p50/p99: the worst of the processes."""
    if not shutil.which("wrk"):
        return None
    rows = []
    for n in range(3):
        for i in range(keys):
            path, body = request(i, n)
            rows.append(f"{path}\t{json.dumps(body)}\n")   # JSON escapes every tab and newline in a string
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(rows))
        data = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        script = f.name
    conns = [clients // len(urls) + (k < clients % len(urls)) for k in range(len(urls))]
    try:
        procs = []
        for k, url in enumerate(urls):
            if not conns[k]:
                continue
            argv = ["wrk", "-t1", f"-c{conns[k]}", f"-d{seconds}s", "--latency", "-s", script]
            for h, v in headers.items():
                argv += ["-H", f"{h}: {v}"]
            procs.append(subprocess.Popen(argv + [url, "--", str(k * 7), data], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        started = time.monotonic()
        outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
        wall = time.monotonic() - started
    finally:
        os.unlink(script)
        os.unlink(data)
    rate, non2xx, p50s, p99s = 0.0, 0, [], []
    for out in outs:
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            print("wrk failed:\n" + out, file=sys.stderr)
            return None
        rate += float(m.group(1))
        e = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        non2xx += int(e.group(1)) if e else 0
        p50s.append(_wrk_ms(out, "50"))
        p99s.append(_wrk_ms(out, "99"))
    ok = [p for p in p99s if p is not None]
    ok50 = [p for p in p50s if p is not None]
    # wrk counts non-2xx answers as requests: take them out of the rate
    good = max(0.0, rate - non2xx / seconds)
    return {"writes_per_s": good, "p50_ms": max(ok50) if ok50 else None, "p99_ms": max(ok) if ok else None,
            "non_2xx": non2xx, "processes": len(outs), "connections": sum(conns), "_writes": good * seconds,
            "_wall": wall}


# -- the systems -----------------------------------------------------------------------------------------------
def bare_http(seconds: float, clients: int) -> dict[str, Any] | None:
    """The same client against a bare aiohttp handler: the HTTP ceiling of this machine."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(BARE_HTTP)
        script = f.name
    proc = subprocess.Popen([sys.executable, script, str(port)])
    try:
        time.sleep(1.0)
        return with_cpu(lambda: asyncio.run(http_load([f"http://127.0.0.1:{port}"], {}, raftctl_request, seconds,
                                                      clients)), [proc.pid])
    finally:
        proc.kill()
        proc.wait()
        os.unlink(script)


def bare_pysyncobj(seconds: float) -> float:
    import selectors

    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(BARE)
        script = f.name
    # every process runs the same script; whichever wins the election drives and prints RATE
    procs = []
    for i in range(3):
        others = [a for j, a in enumerate(addrs) if j != i]
        procs.append(subprocess.Popen([sys.executable, script, addrs[i], ",".join(others), "any", str(seconds)],
                                      stdout=subprocess.PIPE, text=True))
    rate = 0.0
    try:
        sel = selectors.DefaultSelector()
        for p in procs:
            sel.register(p.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + seconds + 30
        while not rate and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line.startswith("RATE"):
                    rate = float(line.split()[1])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.unlink(script)
    return rate


class Etcd:
    """Three etcd members on loopback ports, data under ``directory``; stop() kills them all."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.members = [(f"e{i}", free_port(), free_port()) for i in range(3)]   # name, client, peer port
        self.procs: list[subprocess.Popen] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{c}" for _, c, _ in self.members]

    def start(self, timeout: float = 30.0) -> None:
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, _, p in self.members)
        for name, client, peer in self.members:
            data = os.path.join(self.dir, name)
            log = open(os.path.join(self.dir, f"{name}.log"), "wb")
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", data,
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"bench-{os.getpid()}", "--logger", "zap", "--log-level", "error"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"etcd exited with {p.returncode}; see {self.dir}")
            try:
                if all(json.loads(urllib.request.urlopen(u + "/health", timeout=1).read()).get("health") == "true"
                       for u in self.urls):
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise TimeoutError("etcd not healthy")

    def leader_first(self) -> list[str]:
        for u in self.urls:
            try:
                req = urllib.request.Request(u + "/v3/maintenance/status", data=b"{}", method="POST")
                st = json.loads(urllib.request.urlopen(req, timeout=2).read())
                if st.get("leader") == st.get("header", {}).get("member_id"):
                    return [u] + [x for x in self.urls if x != u]
            except Exception:
                continue
        return self.urls

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def sequential(urls: list[str], headers: dict[str, str], request: Request, seconds: float) -> dict[str, Any] | None:
    """One client writing one request at a time, first through the leader (``urls[0]``), then through a follower:
    the latency of a write with nothing queued ahead of it (session 32's trace: raftctl 2.7 ms, etcd 1.6 ms)."""
    if seconds <= 0:
        return None
    lead = asyncio.run(http_load(urls[:1], headers, request, seconds, 1))
    follow = asyncio.run(http_load(urls[1:2], headers, request, seconds, 1))
    return {"leader_p50_ms": lead["p50_ms"], "leader_p99_ms": lead["p99_ms"],
            "follower_p50_ms": follow["p50_ms"], "follower_p99_ms": follow["p99_ms"],
            "errors": lead["errors"] + follow["errors"]}


def _fmt_seq(r: dict | None) -> str:
    if not r:
        return "n/a"
    return (f"one client p50 {r['leader_p50_ms'] or float('nan'):.2f} ms through the leader, "
            f"{r['follower_p50_ms'] or float('nan'):.2f} ms through a follower")


Results = tuple[dict | None, dict | None, dict | None]   # Python client, wrk, one sequential client


def run_etcd(seconds: float, clients: int, wrk_seconds: int, seq_seconds: float = 0.0) -> Results:
    if not shutil.which("etcd"):
        print("etcd not found (apt-get install etcd-server, or `make bench-deps`): the etcd part is skipped")
        return None, None, None
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as d:
        etcd = Etcd(d)
        try:
            etcd.start()
            urls = etcd.leader_first()
            pids = [p.pid for p in etcd.procs]
            py = with_cpu(lambda: asyncio.run(http_load(urls, {}, etcd_request, seconds, clients)), pids)
            wk = with_cpu(lambda: wrk_load(urls, {"Content-Type": "application/json"}, etcd_request, wrk_seconds,
                                           clients, clients), pids)
            seq = sequential(urls, {}, etcd_request, seq_seconds)
        finally:
            etcd.stop()
    return py, wk, seq


def run_raftctl(seconds: float, clients: int, wrk_seconds: int, tree: str | None = None,
                seq_seconds: float = 0.0) -> Results:
    """``tree``: run the replicas from another checkout of raftctl (a baseline measured in the same run)."""
    with tempfile.TemporaryDirectory(prefix="bench-raftctl-") as d:
        cluster = LocalCluster(d, replicas=3, log_level="warning")
        saved = os.environ.get("PYTHONPATH"), os.getcwd()
        if tree:  # the replicas run `python -m raftctl.cli.main`: the checkout first on their path
            os.environ["PYTHONPATH"] = os.path.abspath(tree)
            os.chdir(tree)
        try:
            cluster.start(timeout=30)
        finally:
            if tree:
                if saved[0] is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved[0]
                os.chdir(saved[1])
        try:
            leader = cluster.leader()
            urls = [leader.url] + [u for u in cluster.urls if u != leader.url] if leader else cluster.urls
            URLS[:] = urls
            headers = {"Authorization": f"Bearer {cluster.token() or ''}", "Content-Type": "application/json"}
            pids = [p.pid for p in cluster.servers if p.pid is not None]
            asyncio.run(http_load(urls, headers, raftctl_request, 1.5, clients, raftctl_setup(clients)))  # jobs, warm
            py = with_cpu(lambda: asyncio.run(http_load(urls, headers, raftctl_request, seconds, clients)), pids)
            wk = with_cpu(lambda: wrk_load(urls, headers, raftctl_request, wrk_seconds, clients, clients), pids)
            seq = sequential(urls, headers, raftctl_request, seq_seconds)
        finally:
            cluster.stop()
    return py, wk, seq


def _fmt(r: dict | None) -> str:
    if not r:
        return "n/a"
    return (f"{r['writes_per_s']:,.0f} writes/s, p50 {r['p50_ms'] or float('nan'):.2f} ms, "
            f"p99 {r['p99_ms'] or float('nan'):.2f} ms, errors {r.get('errors', r.get('non_2xx'))}, "
            f"members' CPU {r.get('cpu_ms_per_write') or float('nan'):.2f} ms/write "
            f"({r.get('members_cpu_cores') or float('nan'):.2f} cores)")


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return round(a["writes_per_s"] / b["writes_per_s"], 3) if a and b and b["writes_per_s"] else None


def _cpu_ratio(a: dict | None, b: dict | None) -> float | None:
    x, y = (a or {}).get("cpu_ms_per_write"), (b or {}).get("cpu_ms_per_write")
    return round(x / y, 2) if x and y else None


def _round(r: dict | None) -> dict | None:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} if r else None


SETTLE_S = 1.0


def settle() -> None:
    """Between two systems: write back what the last one left dirty (etcd preallocates 64 MB WAL files per member,
    and its data dir is deleted at its end) and let the machine go quiet, so the next system's fsyncs do not wait
    behind the last one's writeback. Session 33 saw this tree's worst round both times right after etcd."""
    os.sync()
    time.sleep(SETTLE_S)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=7.0, help="Python-client run per system (1 s warm-up)")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--skip-bare", action="store_true", help="skip bare pysyncobj and bare aiohttp")
    ap.add_argument("--baseline", metavar="DIR", help="also run raftctl from this checkout (e.g. a clone at an older "
                    "commit), alternated with this tree and etcd: before/after in one run")
    ap.add_argument("--rounds", type=int, default=1, help="repeat raftctl (and the baseline) and etcd this often")
    ap.add_argument("--sequential-seconds", type=float, default=4.0,
                    help="one client, one write at a time, through the leader and then a follower, this long each "
                         "(0: skip)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    bare = http = None
    if not args.skip_bare:
        bare = bare_pysyncobj(args.seconds - 1.0)
        print(f"bare pysyncobj counter, pipelined on the leader: {bare:,.0f} commits/s")
        http = bare_http(args.seconds, args.clients)
        print(f"bare aiohttp handler, same client: {_fmt(http)}")
    for n in range(args.rounds):
        # the order turns every round (baseline, this tree, etcd; then etcd, this tree, baseline): whichever runs
        # later in a round meets a warmer, often busier machine (docs/scaling.md: the second of a pair placed faster)
        order = (["baseline"] if args.baseline else []) + ["tree", "etcd"]
        if n % 2:
            order.reverse()
        for system in order:
            settle()
            if system == "baseline":
                b_py, b_wrk, b_seq = run_raftctl(args.seconds, args.clients, args.wrk_seconds, args.baseline,
                                                 args.sequential_seconds)
                print(f"round {n + 1} baseline {args.baseline}: Python client {_fmt(b_py)}; wrk {_fmt(b_wrk)}; "
                      f"{_fmt_seq(b_seq)} (load {os.getloadavg()[0]:.1f})", flush=True)
                print(json.dumps({"round": n + 1, "system": "baseline", "raftctl": _round(b_py),
                                  "raftctl_wrk": _round(b_wrk), "raftctl_sequential": _round(b_seq),
                                  "load1": round(os.getloadavg()[0], 2)}), flush=True)
            elif system == "tree":
                r_py, r_wrk, r_seq = run_raftctl(args.seconds, args.clients, args.wrk_seconds,
                                                 seq_seconds=args.sequential_seconds)
            else:
                e_py, e_wrk, e_seq = run_etcd(args.seconds, args.clients, args.wrk_seconds, args.sequential_seconds)
        if args.rounds > 1:
            print(f"round {n + 1} ({', '.join(order)}) this tree: Python client {_fmt(r_py)}; wrk {_fmt(r_wrk)}; "
                  f"{_fmt_seq(r_seq)}", flush=True)
            print(f"round {n + 1} etcd: Python client {_fmt(e_py)}; wrk {_fmt(e_wrk)}; {_fmt_seq(e_seq)} "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
            print(json.dumps({"round": n + 1, "system": "this tree", "order": order, "raftctl": _round(r_py),
                              "raftctl_wrk": _round(r_wrk), "raftctl_sequential": _round(r_seq), "etcd": _round(e_py),
                              "etcd_wrk": _round(e_wrk), "etcd_sequential": _round(e_seq),
                              "load1": round(os.getloadavg()[0], 2)}), flush=True)
    print(f"raftctl, Python client ({args.clients} clients over 3 replicas): {_fmt(r_py)}")
    print(f"etcd 3.4, Python client ({args.clients} clients over 3 members):  {_fmt(e_py)}")
    print(f"raftctl, wrk ({args.clients} connections over 3 replicas): {_fmt(r_wrk)}")
    print(f"etcd 3.4, wrk ({args.clients} connections over 3 members):  {_fmt(e_wrk)}")
    print(f"raftctl, {_fmt_seq(r_seq)}; etcd 3.4, {_fmt_seq(e_seq)}")
    res = {"bench": "raft_commit", "clients": args.clients, "replica_loop": event_loop_from_env(),
           "load1_before": round(load0, 2),
           "load1_after": round(os.getloadavg()[0], 2),
           "raftctl": _round(r_py), "etcd": _round(e_py), "ratio_vs_etcd": _ratio(r_py, e_py),
           "raftctl_wrk": _round(r_wrk), "etcd_wrk": _round(e_wrk), "ratio_vs_etcd_wrk": _ratio(r_wrk, e_wrk),
           "cpu_per_write_vs_etcd": _cpu_ratio(r_py, e_py), "cpu_per_write_vs_etcd_wrk": _cpu_ratio(r_wrk, e_wrk),
           "raftctl_sequential": _round(r_seq), "etcd_sequential": _round(e_seq),
           "bare_commits_per_s": round(bare, 1) if bare else None,
           "ratio_vs_bare_pysyncobj": round(r_py["writes_per_s"] / bare, 4) if bare and r_py else None,
           "bare_http_per_s": round(http["writes_per_s"], 1) if http else None,
           "ratio_vs_bare_http": _ratio(r_py, http)}
    print(f"ratio raftctl / etcd: Python client {res['ratio_vs_etcd']}, wrk {res['ratio_vs_etcd_wrk']} (aim >= 1.0)")
    print(f"members' CPU per write, raftctl / etcd: Python client {res['cpu_per_write_vs_etcd']}, "
          f"wrk {res['cpu_per_write_vs_etcd_wrk']}")
    if http:
        print(f"ratio raftctl / bare aiohttp (the Python client's ceiling here): {res['ratio_vs_bare_http']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
