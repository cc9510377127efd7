"""The jepsen-style driver: build test hosts, start a cluster, break it on a seeded
schedule while clients write a history, heal, check, report.

    python jepsen-style/run.py --seeds N --duration S [--nodes 3|5] [--out runs/]
    python jepsen-style/run.py --replay runs/X/schedule.json [--out runs/]
    python jepsen-style/run.py --check runs/X          re-run the checkers and the report on a finished run

Exit code: 0 every checker passed (or "unknown"), 1 a checker failed, 2 the harness failed
(e.g. a fault could not be verified). See README.md in this directory.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import containers  # noqa: E402
import hosts  # noqa: E402
import nemesis as nem  # noqa: E402
from hosts import Network, addr_of  # noqa: E402

RAFT_PORT = 7000
API_PORT = 8000
AGENTS = ["a1", "a2", "a3"]
CLIENT = "c1"
VERIFY_PROCESS_S = 5.0  # how long a process may take to show the state a fault put it in (a loaded machine)
LONG_LEADER_ISOLATION_S = 35.0   # longer than pysyncobj's default 30 s leader fallback (raftctl sets 3 s)
UNACCOUNTED_WAIT_S = 45.0  # an agent sweeps its vanished containers' network objects every 30 s (runc.SWEEP_EVERY_S)
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def now_ns() -> int:
    return time.time_ns()


def quiet_for(duration: float) -> float:
    """Seconds of healed cluster (ops still running) before the final reads."""
    return max(15.0, min(30.0, duration / 6))


# -- schedule -------------------------------------------------------------------------

def nemesis_kinds(nodes: list[str]) -> list[tuple[str, int]]:
    """(kind, weight). Leader-relative kinds pick their target when they fire."""
    kinds = [("halves", 3), ("isolate", 2), ("isolate-leader", 3), ("bridge", 2), ("lossy", 2), ("kill", 2),
             ("kill-leader", 2), ("pause", 1), ("pause-leader", 2), ("agent-cut", 1), ("kill-containers", 1),
             ("kill-agent", 1), ("pause-agent", 1)]
    if len(nodes) >= 5:
        kinds.append(("majorities-ring", 2))
    if os.path.exists(FAKETIME_LIB):
        kinds.append(("clock", 1))
    return kinds


def make_event(kind: str, nodes: list[str], rng: random.Random, at: float, duration: float) -> dict[str, Any]:
    ev: dict[str, Any] = {"at": round(at, 2), "kind": kind, "duration": round(duration, 2), "args": {}}
    if kind == "halves":
        ev["partition"] = nem.halves(nodes, rng).to_json()
    elif kind == "bridge":
        ev["partition"] = nem.bridge(nodes, rng).to_json()
    elif kind == "majorities-ring":
        ev["partition"] = nem.majorities_ring(nodes, rng).to_json()
    elif kind == "isolate":
        ev["partition"] = nem.isolate(rng.choice(nodes), nodes).to_json()
    elif kind == "lossy":
        victim = rng.choice(nodes)
        pairs = {(victim, n) for n in nodes if n != victim} | {(n, victim) for n in nodes if n != victim}
        ev["partition"] = nem.lossy(pairs, rng.choice([20, 30, 40])).to_json()
        ev["args"]["node"] = victim
    elif kind == "agent-cut":
        ev["partition"] = nem.cut(AGENTS, nodes, "agent-cut").to_json()
    elif kind in ("kill", "pause", "clock"):
        ev["args"]["node"] = rng.choice(nodes)
    elif kind in ("kill-containers", "kill-agent", "pause-agent"):
        ev["args"]["agent"] = rng.choice(AGENTS)
    return ev


def make_schedule(seed: int, duration: float, nodes: list[str]) -> dict[str, Any]:
    """A seeded list of faults, one at a time, each undone before the next; all end by `duration`.
    Runs of 60 s or more isolate the leader once for longer than 30 s."""
    rng = random.Random(seed)
    kinds = nemesis_kinds(nodes)
    names, weights = [k for k, _ in kinds], [w for _, w in kinds]
    events: list[dict[str, Any]] = []
    long_at = rng.uniform(3.0, duration - LONG_LEADER_ISOLATION_S - 3.0) if duration >= 60 else None
    t = rng.uniform(2.0, 5.0)
    while t < duration - 6:
        if long_at is not None and t >= long_at:
            # the gap after the previous event may carry t up to 5 s past long_at: still end 1 s before the heal
            # (the previous event ended by long_at - 1 <= duration - LONG - 4, so this one starts after it)
            t = min(t, duration - LONG_LEADER_ISOLATION_S - 1.0)
            events.append(make_event("isolate-leader", nodes, rng, t, LONG_LEADER_ISOLATION_S))
            events[-1]["args"]["long"] = True
            t += LONG_LEADER_ISOLATION_S + rng.uniform(3.0, 6.0)
            long_at = None
            continue
        kind = rng.choices(names, weights)[0]
        d = min(rng.uniform(4.0, 14.0), duration - t - 1)
        if long_at is not None:
            d = min(d, max(2.0, long_at - t - 1))
        if d < 2.0:
            break
        events.append(make_event(kind, nodes, rng, t, d))
        t += d + rng.uniform(2.0, 6.0)
    return {"seed": seed, "duration": duration, "nodes": nodes, "agents": AGENTS, "events": events}


# -- the cluster inside the test hosts -------------------------------------------------------

@dataclass
class Cluster:
    net: Network
    run_dir: str
    nodes: list[str]
    runtime: str = "process"   # the agents' (see choose_runtime): runc runs the workload in network: bridge
    procs: dict[str, nem.Proc] = field(default_factory=dict)
    token: str = ""

    def dirs(self, name: str) -> str:
        d = os.path.join(self.run_dir, "data", name)
        os.makedirs(d, exist_ok=True)
        return d

    def api(self, node: str) -> str:
        return f"http://{addr_of(node)}:{API_PORT}"

    def raft(self, node: str) -> str:
        return f"{addr_of(node)}:{RAFT_PORT}"

    def server_argv(self, node: str) -> list[str]:
        argv = [sys.executable, "-m", "raftctl.cli.main", "server", "--id", node, "--data-dir", self.dirs(node),
                "--raft", self.raft(node), "--api", f"{addr_of(node)}:{API_PORT}",
                "--secret-file", os.path.join(self.run_dir, "secret"), "--log-level", "info"]
        for peer in self.nodes:
            if peer != node:
                argv += ["--peer", self.raft(peer)]
        return argv

    def agent_argv(self, agent: str) -> list[str]:
        i = AGENTS.index(agent) + 1
        unisolated = ["--allow-unisolated"] if self.runtime == "process" else []
        argv = [sys.executable, "-m", "raftctl.cli.main", "agent", "--id", agent, "--data-dir", self.dirs(agent),
                "--advertise", addr_of(agent), "--runtime", self.runtime, *unisolated, "--heartbeat", "500ms",
                "--fault-domain", f"region=r1,zone=z{i},rack=k{i}", "--ports", "31000-31999",
                "--cpu", "2000m", "--memory", "2Gi", "--log-level", "info"]
        for node in self.nodes:
            argv += ["--server", self.api(node)]
        return argv

    def log(self, name: str) -> str:
        d = os.path.join(self.run_dir, "logs")
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f"{name}.log")

    def start_servers(self) -> None:
        from raftctl.node.auth import new_token, write_secret_file

        write_secret_file(os.path.join(self.run_dir, "secret"), new_token())
        for n in self.nodes:
            self.procs[n] = nem.Proc(self.net, n, self.server_argv(n), self.log(n))
            self.procs[n].start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.token:
            for n in self.nodes:
                path = os.path.join(self.dirs(n), "admin-token")
                if os.path.exists(path):
                    with open(path) as f:
                        self.token = f.read().strip()
            for n, p in self.procs.items():
                if not p.alive():
                    raise RuntimeError(f"replica {n} exited at start; see {p.log_path}")
            time.sleep(0.2)
        if not self.token:
            raise RuntimeError("no admin token after 60 s")

    def start_agents(self, tokens: dict[str, str]) -> None:
        for a in AGENTS:
            self.procs[a] = nem.Proc(self.net, a, self.agent_argv(a), self.log(a),
                                     env={"RAFTCTL_AGENT_TOKEN": tokens[a]}, share_mounts=self.runtime == "runc")
            self.procs[a].start()

    def stop_all(self) -> dict[str, Any]:
        """Stop every process, then every container (containers outlive their agent by design: adoption).
        Returns what the container clean-up did, per agent, and how long each part took."""
        t0 = time.monotonic()
        for p in self.procs.values():
            p.resume()
            p._signal(signal.SIGTERM)  # all at once: each stop below then waits for one already under way
        for p in self.procs.values():
            p.stop(timeout=5.0)
        out: dict[str, Any] = {"processes_s": round(time.monotonic() - t0, 1)}
        if self.runtime == "process":
            for a in AGENTS:
                kill_containers(self, a)
                containers.kill_process_shims(self.dirs(a))
            return out
        t1 = time.monotonic()

        def clean(a: str) -> None:
            # the agent's own driver, in the agent's host: containers, their namespaces, veths, the bridge,
            # host-gw routes and the nft table go the way the agent removes them
            r = self.net.run(a, [sys.executable, os.path.join(HERE, "containers.py"), "clean", self.dirs(a)],
                             timeout=180, share_mounts=True)
            try:
                out[a] = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                out[a] = {"error": f"exit {r.returncode}: {r.stderr.strip()[-1500:]}"}
            if r.returncode != 0 or out[a].get("failed"):
                out[a]["forced"] = containers.force_remove(self.dirs(a))  # no container may outlive the run

        threads = [threading.Thread(target=clean, args=(a,), name=f"clean-{a}") for a in AGENTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["containers_s"] = round(time.monotonic() - t1, 1)
        return out

    def leftovers(self) -> dict[str, Any]:
        """After stop_all: what is left in the agents' hosts and in the run's own namespace (nothing may be)."""
        out: dict[str, Any] = {a: self.net.leftovers(a) for a in AGENTS}
        root_links = [x for x in self.net.links(None) if x != "lo"]
        tables = [t for t in hosts._sh(["nft", "list", "tables"], check=False).splitlines() if "raftctl" in t]
        out["run_namespace"] = {"links": root_links, "tables": tables}
        out["containers"] = {a: [c["id"] for c in containers.runc_list(self.dirs(a))] for a in AGENTS} \
            if self.runtime == "runc" else {}
        return {k: v for k, v in out.items() if any(v.values())}

    def unaccounted(self) -> dict[str, Any]:
        """Network objects of a runc agent that none of its containers accounts for (see containers.unaccounted)."""
        netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        out = {}
        for a in AGENTS:
            tables = [t for t in self.net.run(a, ["nft", "list", "tables"]).stdout.splitlines() if "raftctl" in t]
            u = containers.unaccounted(self.dirs(a), netns, self.net.links(a), tables)
            if any(u.values()):
                out[a] = u
        return out

    def wait_accounted(self, timeout: float = UNACCOUNTED_WAIT_S) -> dict[str, Any]:
        """The end of the faults: every namespace, veth and link of a runc agent belongs to one of its containers,
        waiting up to `timeout` (the agent sweeps what a vanished container left every 30 s)."""
        if self.runtime != "runc":
            return {"checked": False}
        t0 = time.monotonic()
        first = left = self.unaccounted()
        while left and time.monotonic() - t0 < timeout:
            time.sleep(2.0)
            left = self.unaccounted()
        return {"checked": True, "first_seen": first, "left": left, "waited_s": round(time.monotonic() - t0, 1)}


def container_pids(cluster: Cluster, agent: str) -> dict[str, int]:
    return containers.running(cluster.runtime, cluster.dirs(agent))


def kill_containers(cluster: Cluster, agent: str) -> list[int]:
    """kill -9 the agent's running containers (process: their process groups; runc: each one's init)."""
    return containers.kill_running(cluster.runtime, cluster.dirs(agent))


class ContainerSampler(threading.Thread):
    """Ground truth for the fencing checker: each agent's running containers, read from its
    driver's state every second (containers.jsonl)."""

    def __init__(self, cluster: Cluster, path: str) -> None:
        super().__init__(daemon=True, name="containers")
        self.cluster, self.path = cluster, path
        self.halt = threading.Event()

    def run(self) -> None:
        with open(self.path, "a") as f:
            while not self.halt.wait(1.0):
                for a in AGENTS:
                    try:
                        running = sorted(container_pids(self.cluster, a))
                    except Exception as exc:  # a container dir being written or removed
                        f.write(json.dumps({"time": now_ns(), "agent": a, "error": repr(exc)}) + "\n")
                        continue
                    f.write(json.dumps({"time": now_ns(), "agent": a, "running": running}) + "\n")
                f.flush()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


# -- the nemesis loop -------------------------------------------------------------------

class Nemesis:
    def __init__(self, cluster: Cluster, part: nem.Partitioner, faults_path: str) -> None:
        self.c = cluster
        self.part = part
        self.faults = open(faults_path, "a")
        self.status_path = os.path.join(cluster.run_dir, "status.jsonl")

    def record(self, obj: dict[str, Any]) -> None:
        self.faults.write(json.dumps(obj) + "\n")
        self.faults.flush()

    def current_leader(self) -> str | None:
        """The replica that most recently said it leads (from the observer's status samples)."""
        try:
            with open(self.status_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 20000))
                lines = f.read().decode(errors="replace").splitlines()[1:]
        except OSError:
            return None
        best: tuple[int, int, str] | None = None
        horizon = now_ns() - 3_000_000_000
        for line in lines:
            try:
                s = json.loads(line)
            except ValueError:
                continue
            if s.get("ok") and s.get("state") == "leader" and s["time"] >= horizon:
                cand = (int(s["term"]), int(s["time"]), s["node"])
                best = max(best, cand) if best else cand
        return best[2] if best else None

    def _wait_leader(self, timeout: float = 20.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.current_leader()
            if leader:
                return leader
            time.sleep(0.5)
        return None

    def _verify_process(self, name: str, want: str) -> dict[str, Any]:
        """Whether the process is in the state a fault wants, waiting up to VERIFY_PROCESS_S for it: at load 27
        a SIGSTOPped replica was not yet 'T' 0.1 s later and a sweep run stopped with exit 2."""
        p = self.c.procs[name]
        deadline = time.monotonic() + VERIFY_PROCESS_S
        while True:
            if want == "dead":
                ok = not p.alive()
            elif want == "stopped":
                ok = p.alive() and _proc_state(p.pid) == "T"
            else:
                ok = p.alive() and _proc_state(p.pid) not in ("T", None)
            if ok or time.monotonic() >= deadline:
                return {"ok": ok, "process": name, "want": want, "pid": p.pid}
            time.sleep(0.05)

    def apply(self, ev: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Apply one fault; returns (what was done, how to undo it)."""
        kind = ev["kind"]
        nodes = self.c.nodes
        target = ev["args"].get("node") or ev["args"].get("agent")
        if kind.endswith("-leader"):
            target = self._wait_leader()
            if target is None:
                return {"skipped": "no leader known"}, None
        if "partition" in ev or kind == "isolate-leader":
            p = nem.isolate(target, nodes) if kind == "isolate-leader" else nem.Partition.from_json(ev["partition"])
            applied = self.part.apply(p)
            return {"target": target, **applied.to_json()}, ("partition", None)
        if kind in ("kill", "kill-leader", "kill-agent"):
            self.c.procs[target].kill9()
            return {"target": target, "verified": self._verify_process(target, "dead")}, ("restart", target)
        if kind in ("pause", "pause-leader", "pause-agent"):
            self.c.procs[target].pause()
            time.sleep(0.1)
            return {"target": target, "verified": self._verify_process(target, "stopped")}, ("resume", target)
        if kind == "clock":
            p = self.c.procs[target]
            p.kill9()
            p.env = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "+0 x2", "FAKETIME_NO_CACHE": "1"}
            p.start()
            time.sleep(1.0)
            clock = _clock_rate(p.pid)
            return {"target": target, "faketime": "+0 x2", "verified": {"ok": p.alive(), **clock}}, ("unclock", target)
        if kind == "kill-containers":
            agent = ev["args"]["agent"]
            pids = kill_containers(self.c, agent)
            # a SIGKILLed init dies once the kernel has it out of what it was in: a container started in the same
            # millisecond (seed 3, session 9: its init still alive 0.1 s after) takes longer under load than 0.1 s
            deadline = time.monotonic() + 2.0
            while True:
                time.sleep(0.1)
                alive = [pid for pid in pids if _proc_state(pid) not in (None, "Z")]
                if not alive or time.monotonic() > deadline:
                    break
            return {"target": agent, "pids": pids, "verified": {"ok": not alive, "alive": alive}}, None
        raise ValueError(f"unknown nemesis {kind!r}")

    def undo(self, how: Any) -> dict[str, Any]:
        if how is None:
            return {}
        what, target = how
        if what == "partition":
            return {"healed": self.part.heal().to_json()}
        p = self.c.procs[target]
        if what == "restart":
            p.start()
            return {"restarted": target, "verified": self._verify_process(target, "running")}
        if what == "resume":
            p.resume()
            return {"resumed": target, "verified": self._verify_process(target, "running")}
        if what == "unclock":
            p.kill9()
            p.env = None
            p.start()
            return {"restarted": target, "verified": self._verify_process(target, "running")}
        raise ValueError(what)

    def run(self, schedule: dict[str, Any], t0: float) -> None:
        for ev in schedule["events"]:
            _sleep_until(t0 + ev["at"])
            start = now_ns()
            done, how = self.apply(ev)
            what = done.get("target") or done.get("args") or ""
            print(f"  {time.monotonic() - t0:6.1f}s {ev['kind']} {what} for {ev['duration']}s", flush=True)
            verified = done.get("verified", {})
            self.record({"type": "start", "time": start, "kind": ev["kind"], "event": ev, "done": done})
            if isinstance(verified, dict) and verified.get("ok") is False:
                raise nem.FaultNotVerified(f"{ev['kind']} not in effect: {verified}")
            _sleep_until(t0 + ev["at"] + ev["duration"])
            # The fault ends when it is undone, not when the undo is verified (8-11 s of probes at load 20-25):
            # recovery and convergence count from here.
            lifted = now_ns()
            undone = self.undo(how)
            self.record({"type": "end", "time": lifted, "verified_at": now_ns(), "kind": ev["kind"],
                         "undone": undone, "target": done.get("target")})
            v = undone.get("verified") or undone.get("healed") or {}
            if v.get("ok") is False:
                raise nem.FaultNotVerified(f"undoing {ev['kind']} did not take: {undone}")

    def heal_all(self) -> dict[str, Any]:
        lifted = now_ns()
        healed = self.part.heal().to_json()
        for name, p in self.c.procs.items():
            if p.paused:
                p.resume()
            if p.env and "FAKETIME" in p.env:
                p.kill9()
                p.env = None if name in self.c.nodes else p.env
            if not p.alive():
                p.start()
        out = {"type": "heal", "time": lifted, "partition": healed,
               "processes": {n: self._verify_process(n, "running") for n in self.c.procs}, "verified_at": now_ns()}
        self.record(out)
        return out


def _proc_state(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _clock_rate(pid: int | None) -> dict[str, Any]:
    """Is faketime loaded in the process?"""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {"libfaketime_loaded": "libfaketime" in f.read()}
    except OSError:
        return {"libfaketime_loaded": False}


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- one run ------------------------------------------------------------------------

def choose_runtime(asked: str) -> tuple[str, str | None]:
    """The agents' runtime and, when it is not runc, why (said loudly: the workload then makes no container
    network namespace, so bridge mode goes unexercised). `asked`: auto, runc or process."""
    from raftctl.agent.runtime.runc import runc_available
    from raftctl.agent.testimage import busybox_available

    if asked == "process":
        return "process", "--runtime process asked for"
    problems = [why for bad, why in ((os.geteuid() != 0, "not root"),
                                     (not runc_available(), "runc is not installed (apt-get install runc)"),
                                     (not busybox_available(), "busybox-static is not installed"))
                if bad]
    if not problems:
        return "runc", None
    if asked == "runc":
        raise SystemExit(f"--runtime runc: {'; '.join(problems)}")
    return "process", "; ".join(problems)


def start_service(cluster: Cluster, cfg_path: str) -> dict[str, str]:
    """Once every agent registered, create the service job (workload.py service) and, for runc agents, route
    each agent's container subnet via the agent in the client host: the observers probe the container addresses
    discovery returns. Returns agent -> subnet."""
    r = cluster.net.run(CLIENT, [sys.executable, os.path.join(HERE, "workload.py"), "service", cfg_path], timeout=150)
    if r.returncode != 0:
        raise RuntimeError(f"the service job: {r.stderr.strip()[-2000:]}")
    subnets: dict[str, str] = json.loads(r.stdout)["subnets"]
    for agent, subnet in subnets.items():
        if not subnet.startswith(hosts.CONTAINER_NETS):  # traffic only to the namespaces this run made
            raise RuntimeError(f"{agent}'s subnet {subnet} is outside {hosts.CONTAINER_NETS}0.0/16")
        hosts._sh(["ip", "-n", CLIENT, "route", "replace", subnet, "via", addr_of(agent)])
    return subnets


def run_one(schedule: dict[str, Any], out: str, runtime: str = "process") -> tuple[int, str]:
    seed, duration, nodes = schedule["seed"], float(schedule["duration"]), schedule["nodes"]
    run_dir = os.path.join(os.path.abspath(out), f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}-n{len(nodes)}")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "schedule.json"), "w") as f:
        json.dump(schedule, f, indent=1)
    print(f"seed {seed}: {len(schedule['events'])} faults over {duration:.0f}s -> {run_dir}", flush=True)
    net = Network([*nodes, *AGENTS, CLIENT])
    cluster = Cluster(net, run_dir, nodes, runtime)
    meta: dict[str, Any] = {"seed": seed, "duration": duration, "nodes": nodes, "started": now_ns(),
                            "runtime": runtime}
    workload: subprocess.Popen[bytes] | None = None
    harness_error = None
    try:
        net.setup()
        net.start_probes()
        part = nem.Partitioner(net)
        meta["network_verified"] = part.verify().to_json()
        if not meta["network_verified"]["ok"]:
            raise nem.FaultNotVerified(f"hosts cannot reach each other: {meta['network_verified']}")
        cluster.start_servers()
        cfg = {"seed": seed, "run_dir": run_dir, "token": cluster.token,
               "apis": {n: cluster.api(n) for n in nodes}, "raft_alias": {cluster.raft(n): n for n in nodes},
               "agents": AGENTS, "container_python": sys.executable, "web_replicas": 3,
               "workers": 9, "think_s": 0.2, "op_timeout_s": 10.0, "reg_keys": 3, "scale_keys": 1,
               "ops_per_key": 250, "anonymous_writes": schedule.get("anonymous_writes", 0.0), "runtime": runtime}
        cfg_path = os.path.join(run_dir, "workload-config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        setup = net.run(CLIENT, [sys.executable, os.path.join(HERE, "workload.py"), "setup", cfg_path], timeout=120)
        if setup.returncode != 0:
            raise RuntimeError(f"workload setup failed: {setup.stderr[-2000:]}")
        cluster.start_agents(json.loads(setup.stdout)["agent_tokens"])
        meta["subnets"] = start_service(cluster, cfg_path)
        time.sleep(5.0)  # the service job places
        t0 = time.monotonic()
        t0_ns = now_ns()
        quiet = quiet_for(duration)
        cfg.update(t0_ns=t0_ns, heal_at_ns=t0_ns + int(duration * 1e9),
                   stop_at_ns=t0_ns + int((duration + quiet) * 1e9))
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        meta.update(t0_ns=t0_ns, heal_at_ns=cfg["heal_at_ns"], stop_at_ns=cfg["stop_at_ns"], quiet_s=quiet)
        workload = cluster.net.spawn(CLIENT, [sys.executable, os.path.join(HERE, "workload.py"), "run", cfg_path],
                                     stdout=open(cluster.log("workload"), "ab"), stderr=subprocess.STDOUT)
        nemesis = Nemesis(cluster, part, os.path.join(run_dir, "faults.jsonl"))
        sampler = ContainerSampler(cluster, os.path.join(run_dir, "containers.jsonl"))
        sampler.start()
        try:
            nemesis.run(schedule, t0)
            _sleep_until(t0 + duration)
        finally:
            meta["heal"] = nemesis.heal_all()
            meta["heal_ns"] = meta["heal"]["time"]
        try:
            workload.wait(timeout=quiet + 200)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the workload did not finish in time") from None
        sampler.stop()
        if workload.returncode != 0:
            raise RuntimeError(f"the workload exited with {workload.returncode}; see logs/workload.log")
        meta["after_faults"] = cluster.wait_accounted()
    except Exception as exc:
        harness_error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        if workload is not None and workload.poll() is None:
            workload.kill()
            workload.wait()
        try:
            t = time.monotonic()
            meta["cleanup"] = cluster.stop_all()
            meta["cleanup_s"] = round(time.monotonic() - t, 1)
            if net.ready:
                meta["leftovers"] = cluster.leftovers()
        except Exception as exc:
            traceback.print_exc()
            harness_error = harness_error or f"clean-up: {type(exc).__name__}: {exc}"
        finally:
            net.teardown()
            if hosts.container_netns():  # the hosts are gone: nothing of theirs may be left in /run/netns
                meta.setdefault("leftovers", {})["after_teardown"] = {"netns": hosts.container_netns()}
    meta["harness_error"] = harness_error
    meta["ended"] = now_ns()
    with open(os.path.join(run_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    import analyse

    code = analyse.analyse(run_dir)
    return code, run_dir


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="how many runs (seeds first-seed .. first-seed+N-1)")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of faults per run (then heal + quiet)")
    ap.add_argument("--nodes", type=int, choices=[3, 5], default=3)
    ap.add_argument("--replay", help="a schedule.json to run again")
    ap.add_argument("--out", default=os.path.join(HERE, "runs"))
    ap.add_argument("--check", help="re-run the checkers and the report on a finished run directory")
    ap.add_argument("--runtime", choices=["auto", "runc", "process"], default="auto",
                    help="the agents' runtime; auto: runc (the workload in network: bridge) where root, runc and "
                         "busybox-static are, else process, said loudly")
    ap.add_argument("--anonymous-writes", type=float, default=0.0,
                    help="fraction of writes sent without X-Request-Id (as curl would), waiting up to 30 s")
    args = ap.parse_args(argv)
    if args.duration < 20:
        ap.error("--duration must be at least 20 s")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.check:
        import analyse

        return analyse.analyse(args.check)
    missing = hosts.missing_tools()
    if missing or os.geteuid() != 0:
        print(f"jepsen-style needs root and {missing or 'unshare, ip, nft'}", file=sys.stderr)
        return 2
    if not hosts.in_private_netns():
        hosts.reexec_private([os.path.abspath(__file__), *argv])
    os.makedirs(args.out, exist_ok=True)
    if args.replay:
        with open(args.replay) as f:
            schedules = [json.load(f)]
    else:
        nodes = [f"n{i + 1}" for i in range(args.nodes)]
        schedules = [make_schedule(s, args.duration, nodes)
                     for s in range(args.first_seed, args.first_seed + args.seeds)]
    if args.anonymous_writes:
        for sch in schedules:
            sch["anonymous_writes"] = args.anonymous_writes
    runtime, why_not_runc = choose_runtime(args.runtime)
    if why_not_runc:
        print(f"jepsen-style: agents run --runtime process ({why_not_runc}): NO CONTAINER NETWORK NAMESPACE, bridge "
              "mode is not exercised", file=sys.stderr, flush=True)
    worst = 0
    summary = []
    for sch in schedules:
        code, run_dir = run_one(sch, args.out, runtime)
        summary.append({"seed": sch["seed"], "exit": code, "run": run_dir, "runtime": runtime})
        print(f"seed {sch['seed']}: exit {code}: {os.path.join(run_dir, 'report.md')}", flush=True)
        worst = max(worst, code)
    print(json.dumps({"runs": summary, "exit": worst}))
    return worst


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    sys.exit(main(sys.argv[1:]))
