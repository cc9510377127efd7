"""The scheduler: reconcile -> feasibility -> score -> plan. Pure: no I/O, clock or randomness.

Per job, ``reconcile`` says which replica slots need a placement and which
placements must stop. Feasibility filters (each able to explain a rejection)
reduce the machines to those that can take one replica; scorers (0-100,
weighted) rank them; a lazy-greedy heap places the job's replicas one by one,
re-scoring only what a placement changed. Ties break on a hash of (job, state
index, machine), so the same state gives the same plan on every run.
"""
from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import re2  # google-re2: linear-time matching, no backtracking (pure computation)

RESOURCES = ("cpu", "memory", "pids")
WEIGHTS = {"binpack": 1.0, "spread": 0.7, "anti_affinity": 0.02}  # anti-affinity breaks ties only


Check = Callable[[], None]


def no_check() -> None:
    """The default ``check``: a scheduler pass on the leader always runs to its end."""


# -- plan types ------------------------------------------------------------------

@dataclass(frozen=True)
class NewPlacement:
    job: str
    version: int
    replica: int
    machine: str
    resources: dict[str, int]
    ports: dict[str, int]


@dataclass
class Plan:
    index: int
    place: list[NewPlacement] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)       # (placement id, reason)
    preempt: list[tuple[str, str]] = field(default_factory=list)    # (placement id, by job)
    pending: dict[str, str] = field(default_factory=dict)           # job -> why replicas wait


@dataclass
class Reconciled:
    place: list[int] = field(default_factory=list)                  # replica slots to place
    stop: list[tuple[str, str]] = field(default_factory=list)
    migrate: list[str] = field(default_factory=list)                # on draining machines
    update: list[str] = field(default_factory=list)                 # older versions (the deploy controller's)


def live(p: dict[str, Any]) -> bool:
    """A placement that holds resources and covers its slot."""
    return p["desired"] == "run" and p["state"] not in ("lost", "stopped")


def holds_resources(p: dict[str, Any]) -> bool:
    return p["state"] not in ("lost", "stopped")


def current_spec(job: dict[str, Any]) -> dict[str, Any]:
    return next(v["spec"] for v in job["versions"] if v["version"] == job["version"])


# -- reconcile -------------------------------------------------------------------

def reconcile(job: dict[str, Any], placements: list[dict[str, Any]], machines: dict[str, dict], now: int) -> Reconciled:
    """What one job needs: slots to place, placements to stop, migrate and update."""
    out = Reconciled()
    want = job["replicas"] if job["status"] == "running" else 0
    surge = job.get("surge", 0) if job["status"] == "running" else 0  # extra slots during a deploy (canaries, max_surge)
    covered: dict[int, dict] = {}
    for p in sorted(placements, key=lambda p: (p["replica"], -p["version"], p["id"])):
        if not live(p):
            continue
        m = machines.get(p["machine"])
        if p["replica"] >= want + surge and p.get("retiring_at") and job["status"] == "running":
            continue  # being retired by the rollout: it stops after its drain delay
        if p["replica"] >= want + surge:
            out.stop.append((p["id"], "job stopped" if job["status"] != "running" else "scaled down"))
        elif p["replica"] in covered:
            out.stop.append((p["id"], f"duplicate of replica {p['replica']}"))
        elif m is None or m["status"] == "down":
            continue  # the failover monitor marks it lost; its slot is placed again then
        else:
            covered[p["replica"]] = p
            if m.get("drain"):
                out.migrate.append(p["id"])
            if p["version"] != job["version"]:
                out.update.append(p["id"])
    out.place = [slot for slot in range(want + surge) if slot not in covered]
    return out


# -- machine view ------------------------------------------------------------------

@dataclass
class MachineView:
    id: str
    record: dict[str, Any]
    free: dict[str, int]
    capacity: dict[str, int]
    ports: set[int]
    by_job: Counter
    dom: dict[str, str] = field(default_factory=dict)
    free_ports: int = 0

    def domain(self, level: str) -> str:
        return self.dom.get(level, "")

    def take_ports(self, ports: dict[str, int]) -> None:
        lo, hi = self.record["ports"]
        for port in ports.values():
            if port not in self.ports:
                self.ports.add(port)
                if lo <= port <= hi:
                    self.free_ports -= 1

    def give_ports(self, ports: dict[str, int]) -> None:
        lo, hi = self.record["ports"]
        for port in ports.values():
            if port in self.ports:
                self.ports.discard(port)
                if lo <= port <= hi:
                    self.free_ports += 1


def build_views(machines: dict[str, dict], placements: dict[str, dict]) -> dict[str, MachineView]:
    views = {}
    for mid in sorted(machines):
        m = machines[mid]
        lo, hi = m["ports"]
        views[mid] = MachineView(mid, m, dict(m["resources"]), dict(m["resources"]), set(), Counter(),
                                 {k: str(v) for k, v in (m.get("fault_domain") or {}).items()}, hi - lo + 1)
    for p in placements.values():
        v = views.get(p["machine"])
        if v is None or not holds_resources(p):
            continue
        for k in RESOURCES:
            v.free[k] -= int(p["resources"].get(k, 0))
        v.take_ports(p["ports"])
        if p["desired"] == "run":
            v.by_job[(p["job"], p["version"])] += 1
    return views


# -- feasibility -------------------------------------------------------------------

def attr_value(m: dict[str, Any], attr: str) -> str | None:
    """`labels.ssd`, `fault_domain.zone`, `id`, `address`, `runtime`."""
    cur: Any = m
    for part in attr.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return None if isinstance(cur, (dict, list)) else str(cur)


# -- regex constraints -------------------------------------------------------------
# Patterns run on RE2 (time linear in the pattern and the text, never backtracking). Compiled patterns and
# match results are cached, bounded, keyed by pattern (and text): the scheduler compiles a job's pattern once,
# not once per machine, and many machines sharing one label value cost one match.

MAX_REGEX_LENGTH = 256          # characters of a constraint pattern
REGEX_MAX_MEM = 1 << 20         # bytes RE2 may use per compiled pattern (program + DFA cache)
REGEX_CACHE = 128               # compiled patterns kept
MATCH_CACHE = 4096              # (pattern, text) results kept
MATCH_CACHE_TEXT = 1024         # ... for texts up to this many characters


class RegexError(ValueError):
    """A constraint pattern RE2 cannot run (too long, backreference, look-around, too large...)."""


def _re2_options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = REGEX_MAX_MEM
    return opts


_OPTIONS = _re2_options()


@lru_cache(maxsize=REGEX_CACHE)
def compile_regex(pattern: str) -> Any:
    """The compiled RE2 pattern, or RegexError saying why it cannot be used."""
    if not isinstance(pattern, str):
        raise RegexError(f"must be a string, not {type(pattern).__name__}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise RegexError(f"is {len(pattern)} characters long; at most {MAX_REGEX_LENGTH} are allowed")
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"is not a regular expression RE2 accepts: {reason}") from None
    except (UnicodeError, TypeError, ValueError) as exc:
        raise RegexError(f"is not a regular expression RE2 accepts: {exc}") from None


def regex_search(pattern: str, text: str) -> bool:
    """Whether pattern occurs in text (re.search semantics). A pattern RE2 cannot run, e.g. one stored before
    patterns were validated with RE2, matches nothing: the constraint fails closed."""
    if len(text) <= MATCH_CACHE_TEXT:
        return _cached_search(pattern, text)
    return _search(pattern, text)  # long values are not kept alive by the cache


def _search(pattern: str, text: str) -> bool:
    try:
        return compile_regex(pattern).search(text) is not None
    except (RegexError, UnicodeError):
        return False


_cached_search = lru_cache(maxsize=MATCH_CACHE)(_search)


def constraint_ok(m: dict[str, Any], c: dict[str, Any]) -> bool:
    v = attr_value(m, c["attr"])
    op, want = c["op"], c["value"]
    if op == "exists":
        return v is not None
    if op == "not_exists":
        return v is None
    if op == "==":
        return v == want
    if op == "!=":
        return v != want
    if op == "in":
        return v in want
    if op == "not_in":
        return v not in want
    if op == "regex":
        return v is not None and isinstance(want, str) and regex_search(want, v)
    return False


Filter = Callable[[MachineView, dict[str, Any]], "str | None"]


def f_schedulable(v: MachineView, spec: dict[str, Any]) -> str | None:
    m = v.record
    if m["status"] != "up":
        return "down"
    if m.get("drain"):
        return "draining"
    if not m.get("eligible", True):
        return "in maintenance"
    return None


def f_constraints(v: MachineView, spec: dict[str, Any]) -> str | None:
    for c in spec.get("constraints", []):
        if not constraint_ok(v.record, c):
            return f"constraint {c['attr']} {c['op']} {c['value'] if c['value'] is not None else ''}".rstrip()
    return None


def f_resources(v: MachineView, spec: dict[str, Any]) -> str | None:
    for k in RESOURCES:
        if v.free[k] < spec["resources"][k]:
            return f"insufficient {k}"
    return None


def f_ports(v: MachineView, spec: dict[str, Any]) -> str | None:
    lo, hi = v.record["ports"]
    dynamic = 0
    for p in spec.get("ports", []):
        if p.get("static") is not None:
            if p["static"] in v.ports:
                return f"port {p['static']} in use"
        else:
            dynamic += 1
    if dynamic and v.free_ports < dynamic:
        return "no free ports"
    return None


FILTERS: list[tuple[str, Filter]] = [("schedulable", f_schedulable), ("constraints", f_constraints),
                                     ("resources", f_resources), ("ports", f_ports)]


def explain(views: list[MachineView], spec: dict[str, Any], extra: Counter | None = None,
            total: int | None = None, check: Check = no_check) -> str:
    """`5 machines: 3 insufficient memory, 2 draining` (the first filter each machine fails)."""
    reasons: Counter = Counter(extra or {})
    for v in views:
        check()
        for _, f in FILTERS:
            why = f(v, spec)
            if why:
                reasons[why] += 1
                break
    total = len(views) if total is None else total
    if not total:
        return "no machines registered"
    if not reasons:
        return f"{total} machines: all feasible"
    parts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} machines: {parts}"


def allocate_ports(v: MachineView, spec: dict[str, Any]) -> dict[str, int]:
    lo, hi = v.record["ports"]
    out: dict[str, int] = {}
    taken = set(v.ports)
    nxt = lo
    for p in spec.get("ports", []):
        if p.get("static") is not None:
            out[p["name"]] = p["static"]
            taken.add(p["static"])
            continue
        while nxt in taken:
            nxt += 1
        if nxt > hi:
            raise ValueError("no free port")
        out[p["name"]] = nxt
        taken.add(nxt)
    return out


# -- scoring -----------------------------------------------------------------------

def score_binpack(v: MachineView, spec: dict[str, Any]) -> float:
    """Best fit on the dominant resource: the fuller the machine after placing, the better."""
    fullest = 0.0
    want, cap_, free = spec["resources"], v.capacity, v.free
    for k in RESOURCES:
        cap = cap_[k] or 1
        used = (cap - free[k] + want[k]) / cap
        if used > fullest:
            fullest = used
    return 100.0 * (fullest if fullest < 1.0 else 1.0)


def score_anti_affinity(v: MachineView, job: str, version: int) -> float:
    return 100.0 / (1 + v.by_job[(job, version)])


def score_spread(count_here: int, max_count: int) -> float:
    return 100.0 * (1 - count_here / (max_count + 1))


def tie(seed: bytes, machine: str) -> int:
    return int.from_bytes(hashlib.blake2b(seed + machine.encode(), digest_size=8).digest(), "big")


# -- placing one job -----------------------------------------------------------------

def place_job(name: str, job: dict[str, Any], spec: dict[str, Any], slots: list[int],
              views: dict[str, MachineView], placements: list[dict[str, Any]], index: int,
              check: Check = no_check) -> tuple[list[NewPlacement], str | None]:
    version = job["version"]
    candidates = []
    rejected = Counter()
    for v in views.values():
        check()
        why = f_schedulable(v, spec) or f_constraints(v, spec)
        if why is None:
            candidates.append(v)
    spread_levels = [s for s in spec.get("spread", []) if s.get("level")]
    counts: dict[str, Counter] = {s["level"]: Counter() for s in spread_levels}
    for p in placements:
        if live(p) and p["version"] == version and p["machine"] in views:
            for s in spread_levels:
                counts[s["level"]][views[p["machine"]].domain(s["level"])] += 1
    domains = {s["level"]: {v.domain(s["level"]) for v in candidates} for s in spread_levels}
    limit = {s["level"]: math.ceil(job["replicas"] / max(1, len(domains[s["level"]])))
             for s in spread_levels if s["mode"] == "hard"}
    seed = f"{name}:{index}".encode()

    def score(v: MachineView) -> float:
        total = WEIGHTS["binpack"] * score_binpack(v, spec) + WEIGHTS["anti_affinity"] * score_anti_affinity(v, name, version)
        for s in spread_levels:
            if s["mode"] == "soft":
                c = counts[s["level"]]
                total += WEIGHTS["spread"] * score_spread(c[v.domain(s["level"])], max(c.values(), default=0))
        return total

    def fits(v: MachineView) -> str | None:
        why = f_resources(v, spec) or f_ports(v, spec)
        if why:
            return why
        for level, cap in limit.items():
            if counts[level][v.domain(level)] >= cap:
                return f"hard spread: {level} {v.domain(level) or '(none)'} already has {cap}"
        return None

    heap = []
    for v in candidates:
        if fits(v) is None:
            heap.append((-score(v), tie(seed, v.id), v.id))
    heapq.heapify(heap)
    out: list[NewPlacement] = []
    for slot in slots:
        check()
        chosen = None
        while heap:
            neg, t, mid = heapq.heappop(heap)
            v = views[mid]
            if fits(v) is not None:
                continue  # no longer fits (it only gets fuller within a pass)
            fresh = -score(v)
            if heap and fresh > heap[0][0] + 1e-9:
                heapq.heappush(heap, (fresh, t, mid))  # stale: it scores worse now
                continue
            chosen = v
            break
        if chosen is None:
            break
        ports = allocate_ports(chosen, spec)
        out.append(NewPlacement(name, version, slot, chosen.id, dict(spec["resources"]), ports))
        for k in RESOURCES:
            chosen.free[k] -= spec["resources"][k]
        chosen.take_ports(ports)
        chosen.by_job[(name, version)] += 1
        for s in spread_levels:
            counts[s["level"]][chosen.domain(s["level"])] += 1
        if fits(chosen) is None:
            heapq.heappush(heap, (-score(chosen), tie(seed, chosen.id), chosen.id))
    pending = None
    if len(out) < len(slots):
        left = len(slots) - len(out)
        for v in candidates:
            why = fits(v)
            if why:
                rejected[why] += 1
        others = [v for v in views.values() if v not in candidates]
        pending = f"{left} replicas unplaced; " + explain(others, spec, rejected, total=len(views), check=check)
    return out, pending


# -- preemption ----------------------------------------------------------------------

def preempt_for(name: str, spec: dict[str, Any], views: dict[str, MachineView], placements: dict[str, dict],
                priorities: dict[str, int], check: Check = no_check) -> tuple[str, list[str]] | None:
    """The machine where evicting the fewest lower-priority placements makes one replica fit."""
    prio = spec.get("priority", 50)
    best: tuple[int, int, str, list[str]] | None = None
    by_machine: dict[str, list[dict]] = {}
    for p in placements.values():
        if live(p) and priorities.get(p["job"], 50) < prio:
            by_machine.setdefault(p["machine"], []).append(p)
    for mid, victims_all in sorted(by_machine.items()):
        check()
        v = views.get(mid)
        if v is None or f_schedulable(v, spec) or f_constraints(v, spec):
            continue
        free = dict(v.free)
        ports = set(v.ports)
        chosen: list[str] = []
        for p in sorted(victims_all, key=lambda p: (priorities.get(p["job"], 50), -p["resources"]["memory"], p["id"])):
            if all(free[k] >= spec["resources"][k] for k in RESOURCES):
                break
            chosen.append(p["id"])
            for k in RESOURCES:
                free[k] += p["resources"][k]
            ports -= set(p["ports"].values())
        if all(free[k] >= spec["resources"][k] for k in RESOURCES) and chosen:
            key = (len(chosen), max(priorities.get(placements[c]["job"], 50) for c in chosen), mid, chosen)
            if best is None or key[:3] < best[:3]:
                best = key
    return (best[2], best[3]) if best else None


# -- the whole pass ------------------------------------------------------------------

def schedule(jobs: dict[str, dict], placements: dict[str, dict], machines: dict[str, dict], *,
             index: int, now: int, job_names: list[str] | None = None, check: Check = no_check) -> Plan:
    """One scheduling pass over ``job_names`` (default: every job), highest priority first.

    ``check`` is called between units of work (a machine filtered, a replica placed); a caller that must give
    up (a dry run past its time bound) makes it raise, and the pass stops there."""
    plan = Plan(index=index)
    views = build_views(machines, placements)
    by_job: dict[str, list[dict]] = {}
    for p in placements.values():
        by_job.setdefault(p["job"], []).append(p)
    # highest priority first; within a priority, biggest replicas first (best-fit decreasing packs tighter)
    names = sorted(job_names if job_names is not None else jobs, key=lambda n: _order(jobs.get(n), n))
    priorities = {n: current_spec(j).get("priority", 50) for n, j in jobs.items()}
    stopping: set[str] = set()
    for name in sorted(set(by_job) - set(jobs)):  # placements of purged jobs
        for p in by_job[name]:
            if live(p):
                plan.stop.append((p["id"], "job purged"))
    for name in names:
        check()
        job = jobs.get(name)
        if job is None:
            continue
        spec = current_spec(job)
        rec = reconcile(job, by_job.get(name, []), machines, now)
        for pid, reason in rec.stop:
            if pid not in stopping:
                plan.stop.append((pid, reason))
                stopping.add(pid)
                _release(views, placements[pid])
        if job["status"] != "running" or not rec.place:
            plan.pending[name] = ""
            continue
        placed, pending = place_job(name, job, spec, rec.place, views, by_job.get(name, []), index, check)
        plan.place.extend(placed)
        if pending and spec.get("priority", 50) > 0:
            left = rec.place[len(placed):]
            for slot in left:
                check()
                got = preempt_for(name, spec, views, {k: v for k, v in placements.items() if k not in stopping},
                                  priorities, check)
                if got is None:
                    break
                mid, victims = got
                for pid in victims:
                    plan.preempt.append((pid, name))
                    stopping.add(pid)
                    _release(views, placements[pid])
                more, _ = place_job(name, job, {**spec, "constraints": spec.get("constraints", []) +
                                                [{"attr": "id", "op": "==", "value": mid}]},
                                    [slot], views, by_job.get(name, []), index, check)
                plan.place.extend(more)
                placed = placed + more
            if len(placed) == len(rec.place):
                pending = None
        plan.pending[name] = pending or ""
    return plan


def _order(job: dict[str, Any] | None, name: str) -> tuple:
    if job is None:
        return (0, 0.0, name)
    spec = current_spec(job)
    r = spec["resources"]
    size = max(r["cpu"] / 1000 / 16, r["memory"] / (64 << 30))  # share of a typical 16-core / 64 GiB machine
    return (-spec.get("priority", 50), -size, name)


def _release(views: dict[str, MachineView], p: dict[str, Any]) -> None:
    v = views.get(p["machine"])
    if v is None or not holds_resources(p):
        return
    for k in RESOURCES:
        v.free[k] += int(p["resources"].get(k, 0))
    v.give_ports(p["ports"])
    if p["desired"] == "run":
        v.by_job[(p["job"], p["version"])] -= 1
