"""Clients and observers, run inside the client host (c1) by run.py.

    workload.py setup CONFIG   wait for a leader, create agent tokens (runc agents: push the image); print JSON
    workload.py service CONFIG once every agent registered (runc: with a subnet), create the service job; print
                               JSON {"subnets": agent -> subnet}
    workload.py run CONFIG     workers + observers until stop_at, then final reads; writes files in run_dir

Workers are asyncio tasks, each bound to one replica; each op is one HTTP request with a fresh
X-Request-Id, so a write the API retries internally is applied at most once.

History (history.jsonl, see history.py): writes are PUT /v1/jobs/{key} with env GEN=<unique
value>; reads are GET ?consistent=1 (the register is GEN of a running job, None when the job
is missing or dead); deletes are DELETE /v1/jobs/{key}; scales are POST .../scale on scale
jobs (their register is the replica count). Outcomes:
  200                      -> ok
  4xx                      -> fail (rejected, nothing applied)
  503 outcome_unknown      -> info (proposed, fate unknown)
  other 503                -> fail (the API says nothing was applied); the code is kept
  500 or any other 5xx     -> info, and counted as a bug
  connection refused       -> fail (the request never reached a server)
  timeout / reset / other  -> info for writes, fail for reads
Observers: /v1/status of every replica (status.jsonl), discovery answers (answers.jsonl),
a TCP probe of every endpoint ever announced (health.jsonl), consistent job lists for
convergence (jobs.jsonl) and their placements (placements.jsonl).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from typing import Any

import aiohttp

SERVICE = "web"
ENDPOINT_PROBE_S = 2.0  # a TCP connect to an endpoint; at 0.5 s a starved prober (load 30) saw every endpoint dead
REG_IMAGE = "reg:1"
IMAGES = ("web:1", REG_IMAGE, "scale:1")


def now_ns() -> int:
    return time.time_ns()


def reg_spec(key: str, gen: str) -> dict[str, Any]:
    return {"name": key, "image": REG_IMAGE, "command": ["sleep", "100000"], "replicas": 0, "env": {"GEN": gen}}


def scale_spec(key: str) -> dict[str, Any]:
    return {"name": key, "image": "scale:1", "command": ["sleep", "100000"], "replicas": 1,
            "resources": {"cpu": "10m", "memory": "16Mi"}}


def web_spec(python: str, replicas: int, runtime: str = "process") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": SERVICE, "image": "web:1", "command": [python, "-m", "http.server", "${PORT_HTTP}"],
        "replicas": replicas, "ports": [{"name": "http"}], "resources": {"cpu": "50m", "memory": "64Mi"},
        "spread": [{"level": "zone", "mode": "soft"}], "network": "bridge",
        "health": {"type": "http", "port": "http", "interval": "300ms", "timeout": "500ms", "failures": 2},
        "restart": {"policy": "always", "backoff": {"initial": "100ms", "max": "2s"}}}
    if runtime == "runc":
        # in its own network namespace (bridge) and root: the host's python3 under the image (base: host), with a
        # CPU quota python can start under (50m took seconds), and failed checks counted after 10 s of start
        spec.update(base="host", command=["python3", "-m", "http.server", "${PORT_HTTP}"],
                    resources={"cpu": "200m", "memory": "64Mi", "pids": 64})
        spec["health"] = {**spec["health"], "grace": "10s"}
    return spec


def push_images(cfg: dict[str, Any]) -> dict[str, str]:
    """runc agents run images pulled from the control plane: one small image (base: host, so python3 and sleep
    come from the host's /usr and /bin read-only), built here without network access and pushed under the names
    the jobs use. Returns name -> digest."""
    from raftctl.agent.images import ImageStore
    from raftctl.cli.image import push_and_tag
    from raftctl.client import Client

    src = os.path.join(cfg["run_dir"], "image", "src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "index.html"), "w") as f:
        f.write("jepsen-style web\n")
    store = ImageStore(os.path.join(cfg["run_dir"], "image", "store"))
    digest = store.build(src, IMAGES[0], base="host")
    client = Client(list(cfg["apis"].values()), cfg["token"], retry_for=60.0)
    out = {}
    for name in IMAGES:
        store.tag(name, digest)
        out[name] = push_and_tag(client, store, name, digest)["digest"]
    return out


class Api:
    """One aiohttp session; `call` never raises, it returns (status, body, error)."""

    def __init__(self, token: str, timeout_s: float) -> None:
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Api":
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        # aiohttp (3.14) sends a PUT or DELETE again, once, when the server drops the connection before it
        # answers; if that second connect is refused, a write the server had received (and applied) read as
        # "refused": a certain fail (seed 3 x 150 s: a PUT to n1 killed mid-request failed "refused" and was
        # read back 0.7 s later). One request, one attempt (aiohttp's own test client turns it off the same way).
        self.session._retry_connection = False
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(self, method: str, url: str, body: Any = None, timeout: float | None = None,
                   request_id: bool = True) -> tuple[int | None, Any, str | None]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        if request_id:
            headers["X-Request-Id"] = uuid.uuid4().hex
        to = aiohttp.ClientTimeout(total=timeout) if timeout else self.timeout
        try:
            async with self.session.request(method, url, json=body, headers=headers, timeout=to) as resp:
                raw = await resp.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = {"raw": raw[:200].decode(errors="replace")}
                return resp.status, data, None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return None, None, "refused" if refused else f"connect: {exc.os_error}"
        except asyncio.TimeoutError:
            return None, None, "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return None, None, f"{type(exc).__name__}: {exc}"


def error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return None


def classify_write(status: int | None, body: Any, err: str | None) -> str:
    if status == 200:
        return "ok"
    if status is None:
        return "fail" if err == "refused" else "info"
    if 400 <= status < 500:
        return "fail"
    if status == 503 and error_code(body) != "outcome_unknown":
        return "fail"
    return "info"


def register_value(key: str, job: Any) -> Any:
    """The register a job holds: GEN for register jobs, the replica count for scale jobs."""
    if not isinstance(job, dict) or job.get("status") != "running":
        return None
    if key.startswith("s"):
        return job.get("replicas")
    return (job.get("spec") or {}).get("env", {}).get("GEN")


class Writer:
    """A JSON-lines file flushed at least every second."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "a")
        self.last = time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        self.f.write(json.dumps(obj) + "\n")
        if time.monotonic() - self.last > 1.0:
            self.f.flush()
            self.last = time.monotonic()

    def close(self) -> None:
        self.f.close()


class Workload:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.urls: dict[str, str] = cfg["apis"]           # node -> http://addr:port
        self.raft_alias: dict[str, str] = cfg["raft_alias"]  # raft addr -> node
        self.rng = random.Random(cfg["seed"] * 7919 + 1)
        d = cfg["run_dir"]
        self.history = Writer(os.path.join(d, "history.jsonl"))
        self.status = Writer(os.path.join(d, "status.jsonl"))
        self.answers = Writer(os.path.join(d, "answers.jsonl"))
        self.health = Writer(os.path.join(d, "health.jsonl"))
        self.jobs = Writer(os.path.join(d, "jobs.jsonl"))
        self.placements = Writer(os.path.join(d, "placements.jsonl"))
        self.keys_used: list[str] = []
        self.endpoints: set[str] = set()
        self.counter = 0
        self.bugs: list[dict[str, Any]] = []
        self.ops = {"ok": 0, "fail": 0, "info": 0}
        # each key type has a current key that is retired after `key_ops` ops (independent keys)
        self.current = {"r": [self._new_key("r") for _ in range(cfg["reg_keys"])],
                        "s": [self._new_key("s") for _ in range(cfg["scale_keys"])]}
        self.key_ops: dict[str, int] = {}
        self.to_delete: list[str] = []
        self.created: set[str] = set()

    def _new_key(self, kind: str) -> str:
        key = f"{kind}{len(self.keys_used)}"
        self.keys_used.append(key)
        return key

    # -- one operation ------------------------------------------------------------
    async def op(self, api: Api, process: int, f: str, key: str, value: Any = None, node: str | None = None) -> str:
        node = node or self.rng.choice(sorted(self.urls))
        base = self.urls[node]
        hf = "write" if f == "scale" else f  # a scale writes the scale job's register (its replica count)
        self.history.write({"process": process, "type": "invoke", "f": hf, "key": key, "value": value,
                            "time": now_ns(), "node": node, "api": f})
        if f == "read":
            status, body, err = await api.call("GET", f"{base}/v1/jobs/{key}?consistent=1")
            if status == 200:
                kind, out = "ok", register_value(key, body)
            elif status == 404 and error_code(body) == "not_found":
                kind, out = "ok", None
            else:
                kind, out = "fail", None
        else:
            # "anonymous" writes carry no X-Request-Id (as curl would) and wait longer (30 s)
            anonymous = f == "write" and self.rng.random() < self.cfg.get("anonymous_writes", 0.0)
            if f == "write":
                spec = scale_spec(key) if key.startswith("s") else reg_spec(key, value)
                status, body, err = await api.call("PUT", f"{base}/v1/jobs/{key}", spec,
                                                   timeout=30.0 if anonymous else None, request_id=not anonymous)
            elif f == "scale":
                status, body, err = await api.call("POST", f"{base}/v1/jobs/{key}/scale", {"replicas": value})
            elif f == "delete":
                status, body, err = await api.call("DELETE", f"{base}/v1/jobs/{key}")
            else:
                raise ValueError(f)
            kind, out = classify_write(status, body, err), value
            if f == "delete" and status == 404:
                kind = "fail"
        if status is not None and status >= 500 and status != 503:
            self.bugs.append({"time": now_ns(), "f": f, "key": key, "node": node, "status": status, "body": body})
        done: dict[str, Any] = {"process": process, "type": kind, "f": hf, "key": key, "value": out,
                                "time": now_ns(), "node": node}
        if f != "read" and anonymous:
            done["anonymous"] = True
        if kind != "ok":
            done["error"] = error_code(body) or err or status
        elif isinstance(body, dict) and "index" in body:
            done["index"] = body["index"]
        self.history.write(done)
        self.ops[kind] += 1
        if kind == "ok" and f == "write" and key.startswith("s"):
            self.created.add(key)
        return kind

    def _pick(self) -> tuple[str, str, Any]:
        scale_ok = now_ns() < self.cfg["heal_at_ns"] and self.current["s"]
        if self.to_delete:
            return "delete", self.to_delete.pop(), None
        if scale_ok and self.rng.random() < 0.15:
            key = self.rng.choice(self.current["s"])
            if key not in self.created:
                return "write", key, 1  # creates the scale job (PUT with replicas 1)
            if self.rng.random() < 0.5:
                return "scale", key, self.rng.randint(0, 3)
            return "read", key, None
        key = self.rng.choice(self.current["r"])
        x = self.rng.random()
        if x < 0.45:
            self.counter += 1
            return "write", key, f"{self.cfg['seed']}-{self.counter}"
        if x < 0.93:
            return "read", key, None
        return "delete", key, None

    def _count(self, key: str) -> None:
        n = self.key_ops[key] = self.key_ops.get(key, 0) + 1
        kind = key[0]
        if n >= self.cfg["ops_per_key"] and key in self.current[kind]:
            i = self.current[kind].index(key)
            self.current[kind][i] = self._new_key(kind)
            if kind == "s":
                self.to_delete.append(key)  # stop its containers; the delete is in the history

    # -- tasks ------------------------------------------------------------------------
    async def worker(self, api: Api, w: int) -> None:
        """Worker w talks to one replica (w mod replicas), as a Jepsen client is bound to a node:
        a partitioned replica stalls only its own workers."""
        process = w
        nodes = sorted(self.urls)
        while now_ns() < self.cfg["stop_at_ns"]:
            f, key, value = self._pick()
            self._count(key)
            kind = await self.op(api, process, f, key, value, node=nodes[w % len(nodes)])
            if kind == "info":  # the op may still be in flight: a new process takes over (Jepsen style)
                process += self.cfg["workers"]
            await asyncio.sleep(self.rng.uniform(0, self.cfg["think_s"]))

    async def poll_status(self, api: Api) -> None:
        while not self.done:
            t = now_ns()
            results = await asyncio.gather(*(api.call("GET", f"{u}/v1/status", timeout=1.0) for u in self.urls.values()))
            for node, (status, body, err) in zip(self.urls, results):
                if status == 200 and isinstance(body, dict):
                    self.status.write({"time": t, "node": node, "ok": True, "term": body.get("term"),
                                       "state": body.get("state"),
                                       "leader": self.raft_alias.get(body.get("leader") or "", body.get("leader")),
                                       "commit_index": body.get("commit_index"),
                                       "applied_index": body.get("applied_index"), "index": body.get("index"),
                                       "entries": body.get("entries"), "chain": body.get("chain"),
                                       "epoch": body.get("epoch"), "has_quorum": body.get("has_quorum"),
                                       "log_len": body.get("log_len"),
                                       "connected": sorted(self.raft_alias.get(m["raft"], m["raft"])
                                                           for m in body.get("members", []) if m.get("connected"))})
                else:
                    self.status.write({"time": t, "node": node, "ok": False, "error": err or status})
            await asyncio.sleep(0.5)

    async def poll_discovery(self, api: Api) -> None:
        i = 0
        while not self.done:
            i += 1
            node = self.rng.choice(sorted(self.urls))
            consistent = i % 2 == 0
            q = "?consistent=1" if consistent else ""
            t = now_ns()
            status, body, err = await api.call("GET", f"{self.urls[node]}/v1/discovery/{SERVICE}{q}", timeout=3.0)
            if status == 200 and isinstance(body, dict):
                eps = [f"{e['address']}:{e['port']}" for e in body.get("endpoints", [])]
                self.endpoints.update(eps)
                self.answers.write({"time": now_ns(), "invoked": t, "service": SERVICE, "endpoints": eps,
                                    "node": node, "consistent": consistent, "index": body.get("index")})
            await asyncio.sleep(0.5)

    async def probe_endpoints(self) -> None:
        async def one(ep: str) -> bool:
            host, _, port = ep.rpartition(":")
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), ENDPOINT_PROBE_S)
            except (OSError, asyncio.TimeoutError):
                return False
            w.close()
            return True

        while not self.done:
            eps = sorted(self.endpoints)
            t = now_ns()
            for ep, ok in zip(eps, await asyncio.gather(*(one(e) for e in eps))):
                self.health.write({"time": t, "endpoint": ep, "healthy": ok})
            await asyncio.sleep(0.5)

    async def poll_jobs(self, api: Api) -> None:
        while not self.done:
            node = self.rng.choice(sorted(self.urls))
            status, body, _ = await api.call("GET", f"{self.urls[node]}/v1/jobs?consistent=1", timeout=3.0)
            t = now_ns()
            if status == 200 and isinstance(body, dict):
                watched = []
                for j in body.get("jobs", []):
                    if j["status"] == "running" and (j["name"] == SERVICE or j["name"].startswith("s")):
                        watched.append(j["name"])
                        self.jobs.write({"time": t, "job": j["name"], "want": j["replicas"],
                                         "running": j["counts"]["running"], "node": node})
                for name in watched:
                    t = now_ns()
                    status, body, _ = await api.call(
                        "GET", f"{self.urls[node]}/v1/jobs/{name}/placements?consistent=1", timeout=3.0)
                    if status == 200 and isinstance(body, dict):
                        self.placements.write({"time": t, "job": name, "node": node, "placements": [
                            {k: p.get(k) for k in ("id", "desired", "state", "machine", "health")}
                            for p in body.get("placements", [])]})
            await asyncio.sleep(2.0)

    async def final_reads(self, api: Api) -> None:
        """After the run: one successful consistent read of every key (retried for up to 90 s)."""
        self.final_at = now_ns()
        process = 10_000
        pending = list(self.keys_used)
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            left = []
            for key in pending:
                if await self.op(api, process, "read", key) != "ok":
                    left.append(key)
                process += 1
            pending = left
            if pending:
                await asyncio.sleep(1.0)
        self.final_missing = pending

    async def save_events(self, api: Api) -> None:
        """The cluster's event log and machines at the end (for diagnosis; not checked)."""
        out: dict[str, Any] = {}
        for path in ("/v1/events?index=0", "/v1/machines"):
            for url in self.urls.values():
                status, body, _ = await api.call("GET", url + path, timeout=5.0)
                if status == 200:
                    out[path] = body
                    break
        with open(os.path.join(self.cfg["run_dir"], "events.json"), "w") as f:
            json.dump(out, f, indent=1)

    async def run(self) -> dict[str, Any]:
        self.done = False
        async with Api(self.cfg["token"], self.cfg["op_timeout_s"]) as api:
            observers = [asyncio.create_task(c) for c in (self.poll_status(api), self.poll_discovery(api),
                                                          self.probe_endpoints(), self.poll_jobs(api))]
            await asyncio.gather(*(self.worker(api, w) for w in range(self.cfg["workers"])))
            await self.final_reads(api)
            await self.save_events(api)
            self.done = True
            await asyncio.gather(*observers, return_exceptions=True)
        for w in (self.history, self.status, self.answers, self.health, self.jobs, self.placements):
            w.close()
        return {"final_at_ns": self.final_at, "final_missing": self.final_missing, "keys": self.keys_used,
                "ops": self.ops, "bugs": self.bugs}


async def setup(cfg: dict[str, Any]) -> dict[str, Any]:
    """Wait for a leader that answers, create one agent token per agent and the service job."""
    out: dict[str, Any] = {"agent_tokens": {}}
    deadline = time.monotonic() + 90
    async with Api(cfg["token"], 10.0) as api:
        async def post(path: str, body: Any, method: str = "POST") -> Any:
            """The answer, or None for a 409 (the request was applied by an attempt whose answer was lost)."""
            last: Any = None
            while time.monotonic() < deadline:
                for url in cfg["apis"].values():
                    status, data, err = await api.call(method, url + path, body)
                    if status == 200:
                        return data
                    if status == 409:
                        return None
                    last = (status, data, err)
                await asyncio.sleep(0.5)
            raise SystemExit(f"setup: {method} {path} failed: {last}")

        for agent in cfg["agents"]:
            # A token's secret is in its creation answer only: if an attempt created it but its answer was lost,
            # the retry is a 409 (name taken; a sweep at load 25 stopped there with exit 2), so take a new name.
            for n in range(10):
                data = await post("/v1/tokens", {"role": "agent", "name": f"agent-{agent}" + (f"-{n}" if n else ""),
                                                 "machine": agent})
                if data is not None:
                    out["agent_tokens"][agent] = data["token"]
                    break
            else:
                raise SystemExit(f"setup: no token for {agent}: every name taken")
        if cfg.get("runtime") == "runc":
            out["images"] = await asyncio.to_thread(push_images, cfg)
    return out


async def service(cfg: dict[str, Any], timeout_s: float = 90.0) -> dict[str, Any]:
    """Once every agent has registered (a runc one with its container subnet), create the service job, so its
    replicas spread over the agents (created before, they all went to the first agent to register). Returns
    {"subnets": agent -> subnet (runc agents)}."""
    deadline = time.monotonic() + timeout_s
    runc = cfg.get("runtime") == "runc"
    last: Any = None
    have: dict[str, Any] = {}
    async with Api(cfg["token"], 5.0) as api:
        while time.monotonic() < deadline and not all(a in have and (not runc or have[a]) for a in cfg["agents"]):
            await asyncio.sleep(0.5)
            for url in cfg["apis"].values():
                status, body, err = await api.call("GET", url + "/v1/machines?consistent=1")
                last = have if status == 200 else (status, body, err)
                if status == 200 and isinstance(body, dict):
                    have = {m.get("id"): m.get("subnet") if isinstance(m.get("subnet"), str) else None
                            for m in body.get("machines", [])}
                    break
        if not all(a in have and (not runc or have[a]) for a in cfg["agents"]):
            raise SystemExit(f"service: not every agent registered{' with a subnet' if runc else ''} after "
                             f"{timeout_s:.0f} s: {last}")
        spec = web_spec(cfg["container_python"], cfg["web_replicas"], cfg.get("runtime", "process"))
        while time.monotonic() < deadline:
            for url in cfg["apis"].values():
                status, data, err = await api.call("PUT", f"{url}/v1/jobs/{SERVICE}", spec)
                if status in (200, 409):  # 409: applied by an attempt whose answer was lost
                    return {"subnets": {a: have[a] for a in cfg["agents"]} if runc else {}}
                last = (status, data, err)
            await asyncio.sleep(0.5)
    raise SystemExit(f"service: PUT /v1/jobs/{SERVICE} failed: {last}")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("setup", "run", "service"):
        raise SystemExit(__doc__)
    with open(argv[1]) as f:
        cfg = json.load(f)
    if argv[0] in ("setup", "service"):
        print(json.dumps(asyncio.run(setup(cfg) if argv[0] == "setup" else service(cfg))))
        return
    result = asyncio.run(Workload(cfg).run())
    with open(os.path.join(cfg["run_dir"], "workload.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
