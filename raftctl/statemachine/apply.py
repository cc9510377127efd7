"""apply(state, command) -> Result: validate first, then mutate.

A rejected command changes nothing (the snapshot stays byte-identical) and
returns a typed :class:`Rejection`. Time comes only from ``cmd.at``; ids come
from state counters. ``apply_entry`` applies one log entry (a batch) and is the
only thing the replicated method calls.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Mapping, TypeVar

import msgspec
from msgspec.structs import replace

from raftctl.statemachine import commands as c
from raftctl.statemachine.records import (DIGEST_RE, HEALTH_STATES, IMAGE_NAME_RE, PLACEMENT_STATES,
                                          RELEASED_STATES, Deployment, Drain, Image, Job, JobSpec, JobVersion,
                                          Machine, Placement, PlanItem, PlanStop, RecordError, container_port,
                                          from_wire, list_from_wire)
from raftctl.statemachine.state import MAX_DEDUP, MAX_EVENTS, NO_USAGE, State
from raftctl.statemachine.subnets import DEFAULT_POOL, PoolError, allocate_address, allocate_subnet, subnet_key

ROLES = ("admin", "deployer", "operator", "reader", "agent")
MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_VERSIONS = 20  # versions kept per job (Nomad keeps 6)


# runtimes that give a bridge placement a network namespace of its own (the process and sim runtimes do not)
BRIDGE_RUNTIMES: Final = ("runc",)


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


@dataclass
class Result:
    ok: bool
    index: int
    value: dict[str, Any] = field(default_factory=dict)
    error: Rejection | None = None

    def to_obj(self) -> dict[str, Any]:
        return {"ok": self.ok, "index": self.index, "value": self.value,
                "error": self.error.to_dict() if self.error else None}

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "Result":
        err = obj.get("error")
        return cls(obj["ok"], obj["index"], obj.get("value") or {},
                   Rejection(err["code"], err["message"], err.get("field")) if err else None)


@dataclass(frozen=True)
class Unchanged:
    """A handler's answer when the command is valid but changes nothing."""

    value: dict[str, Any]


class Reject(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.rejection = Rejection(code, message, field)


# -- entry level ---------------------------------------------------------------

def apply_entry(state: State, data: bytes) -> list[Result]:
    """Apply one log entry (a CBOR list of commands); never raises."""
    state.entries += 1
    state.chain = hashlib.sha256(state.chain.encode() + data).hexdigest()
    try:
        items = c.decode_entry(data)
    except c.DecodeError as exc:
        return [Result(False, state.index, error=Rejection(exc.code, exc.message, exc.field))]
    results = []
    for item in items:
        try:
            cmd = c.from_wire(item)
        except c.DecodeError as exc:
            results.append(Result(False, state.index, error=Rejection(exc.code, exc.message, exc.field)))
            continue
        results.append(apply(state, cmd, item))
    return results


def apply(state: State, cmd: c.Command, wire: dict[str, Any] | None = None) -> Result:
    """Apply one command. Deterministic; a rejection leaves ``state`` untouched but for the dedup entry of a
    command that carries a request id.

    A command with a request id is answered from the dedup table when that id was already applied
    to the same command (same op, same digest); the id used for a different command is a
    ``request_id_conflict`` rejection. See docs/state.md for the table's order and bound.

    ``wire`` is the map ``cmd`` was decoded from, when there is one: when it holds every field (entries the
    proposer wrote do; an older entry may lack a field added since, whose default the digest covers) the digest
    is taken from it without building the map again: ``from_wire`` copied its values unchanged."""
    digest = ""
    if cmd.id:
        try:
            if wire is not None and len(wire) == c.WIRE_SIZE[type(cmd)]:
                digest = c.wire_digest(wire, cmd.CLOCK_FIELDS)
            else:
                digest = c.command_digest(cmd)
        except Exception as exc:  # a value decoded from the log that cannot be encoded again
            return Result(False, state.index, error=Rejection("bad_command", f"the command cannot be hashed: {exc}"))
        seen = state.dedup.get(cmd.id)
        if seen is not None:
            # entries restored from a snapshot of before op/digest were recorded dedup by id alone
            if seen.get("op", int(cmd.OP)) != int(cmd.OP) or seen.get("digest", digest) != digest:
                used = c.COMMANDS[seen["op"]].__name__ if seen.get("op") in c.COMMANDS else "another command"
                return Result(False, state.index, error=Rejection(
                    "request_id_conflict", f"request id {cmd.id!r} was already used by a different command "
                    f"({used}); use a new id for a new request", "X-Request-Id"))
            return Result.from_obj(seen)
    result = _run(state, cmd)
    if cmd.id:
        # every answer to an id is remembered, a rejection or a no-op too: a copy of the request applied later
        # (a retry, or a proxied copy a paused replica proposes after the client was answered) must get the same
        # answer, not run again against a state that changed meanwhile (jepsen-style seed 5: a delete answered
        # not_found, then applied 7 s later by the copy a paused leader still held, deleted a job written since)
        _remember(state, cmd, digest, result)
    return result


def _run(state: State, cmd: c.Command) -> Result:
    """The command's handler on ``state``: its answer (a rejection leaves ``state`` untouched)."""
    handler = HANDLERS.get(type(cmd))
    if handler is None:
        return Result(False, state.index, error=Rejection("unknown_op", f"no handler for {cmd.OP!r}", "op"))
    try:
        value = handler(state, cmd)
    except Reject as rej:
        return Result(False, state.index, error=rej.rejection)
    except Exception as exc:  # a bug; deterministic on every replica, so they still agree
        return Result(False, state.index, error=Rejection("internal", f"{type(exc).__name__}: {exc}"))
    if value is None:  # a no-op: nothing changed
        return Result(True, state.index)
    if isinstance(value, Unchanged):
        return Result(True, state.index, value.value)
    return Result(True, state.index, value)


def _remember(state: State, cmd: c.Command, digest: str, result: Result) -> None:
    """Record an applied command's id. Eviction takes the lowest ``seq`` (a replicated counter), which
    is also the dict's first key: entries are added in ``seq`` order and restore re-sorts them."""
    state.seq["dedup"] = state.seq.get("dedup", 0) + 1
    state.dedup[cmd.id] = {**result.to_obj(), "op": int(cmd.OP), "digest": digest, "seq": state.seq["dedup"]}
    while len(state.dedup) > MAX_DEDUP:
        del state.dedup[next(iter(state.dedup))]


T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)


# -- helpers -----------------------------------------------------------------

def _bump(state: State, *tables: str) -> int:
    state.index += 1
    for t in tables:
        state.table_index[t] = state.index
    return state.index


def _event(state: State, at: int, kind: str, message: str, **refs: Any) -> None:
    state.seq["event"] += 1
    ev = {"seq": state.seq["event"], "index": state.index, "at": at, "kind": kind, "message": message}
    ev.update({k: v for k, v in refs.items() if v is not None})
    state.events.append(ev)
    if len(state.events) > MAX_EVENTS:
        del state.events[: len(state.events) - MAX_EVENTS]
    state.table_index["events"] = state.index


def _need(cond: bool, code: str, message: str, field: str | None = None) -> None:
    if not cond:
        raise Reject(code, message, field)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _found(value: T | None, code: str, message: str, field: str | None = None) -> T:
    """``value`` if it is there, else a rejection."""
    if value is None:
        raise Reject(code, message, field)
    return value


def _need_str_list(values: list[Any], field: str) -> None:
    for i, v in enumerate(values):
        _need(isinstance(v, str), "invalid", f"{field}[{i}] must be a string", field)


def _job(state: State, name: str) -> Job:
    return _found(state.jobs.get(name), "not_found", f"job {name!r} does not exist", "name")


def _current_spec(job: Job) -> JobSpec:
    spec = job.spec_of(job.version)
    if spec is None:
        raise Reject("internal", f"job {job.name} has no version {job.version}")
    return spec


def _pruned(state: State, job: Job) -> Job:
    """``job`` keeping its newest MAX_VERSIONS versions (history for rollback). A placement of a pruned version
    loses its spec in its agent's assignments: its machine changed."""
    extra = len(job.versions) - MAX_VERSIONS
    if extra <= 0:
        return job
    _touch_versions(state, job.name, {v.version for v in job.versions[:extra]})
    return replace(job, versions=job.versions[extra:])


def _touch_versions(state: State, name: str, versions: set[int]) -> None:
    """The machines of job ``name``'s placements of ``versions`` changed: their specs came or went."""
    for pid in state.by_job.get(name, ()):
        p = state.placements[pid]
        if p.version in versions:
            state.touch_machine(p.machine)


def _unpublish(state: State, p: Placement) -> bool:
    job = state.jobs.get(p.job)
    service = _current_spec(job).service_name if job else p.job
    svc = state.discovery.get(service)
    if svc and p.id in svc["endpoints"]:
        del svc["endpoints"][p.id]
        svc["index"] = state.index
        state.table_index["discovery"] = state.index
        return True
    return False


def _publish(state: State, p: Placement, spec: JobSpec) -> None:
    machine = state.machines.get(p.machine)
    port = None
    if spec.ports:
        port = p.ports.get(spec.ports[0].name)
        if port is not None and machine is not None and _bridged(spec, machine):  # at the container's own address
            port = container_port(spec.ports[0], port)
    svc = state.discovery.setdefault(spec.service_name, {"index": state.index, "endpoints": {}})
    svc["endpoints"][p.id] = {
        "address": p.address, "port": port, "placement": p.id, "machine": p.machine,
        "version": p.version, "fault_domain": dict(machine.fault_domain) if machine else {},
    }
    svc["index"] = state.index
    state.table_index["discovery"] = state.index


def _set_placement(s: State, p: Placement, at: int, **changes: Any) -> Placement:
    """Store ``p`` with ``changes`` (and its update time and index); the stored record."""
    new = replace(p, updated_at=at, modify_index=s.index, **changes)
    s.put_placement(new)
    if _wakes_agent(p, new):
        s.touch_machine(p.machine)
    s.touch_job(p.job)
    return new


# A placement's fields that its agent reports (with its state, below): a change to these alone is news to no agent
_REPORTED: Final = ("health", "exit_code", "reason", "updated_at", "healthy_at", "modify_index")


def _wakes_agent(old: Placement, new: Placement) -> bool:
    """Whether the machine's agent acts on the change from ``old`` to ``new`` (its assignment watch is woken):
    anything but what the agent reports itself. A state into or out of RELEASED_STATES (lost, stopped) is acted
    on; starting, running, healthy, exited are what the agent just said. Each start used to wake the
    agent's watch three times (the Plan, then its own "starting" and "running, healthy" reports), each answer
    the machine's whole assignment encoded on a replica and decoded by the agent."""
    if old.state != new.state and (old.state in RELEASED_STATES or new.state in RELEASED_STATES):
        return True
    return replace(old, state=new.state, **{f: getattr(new, f) for f in _REPORTED}) != new


# -- handlers ------------------------------------------------------------------

def _noop(state: State, cmd: c.Noop) -> None:
    return None


def resolve_image(images: Mapping[str, Image], spec: JobSpec) -> JobSpec:
    """The spec as a job version stores it: ``image_digest`` is the manifest digest that ``image``
    names in ``images`` now (a ``sha256:`` reference names itself; a name not pushed gives None).

    Pure, so every replica resolves alike at apply time; a later re-tag does not change stored
    versions, and a rollback returns to the old bytes. Any ``image_digest`` in the input is
    replaced: clients cannot choose it."""
    image = spec.image
    found = images.get(image)
    digest = image if image.startswith("sha256:") else (found.digest if found is not None else None)
    return replace(spec, image_digest=digest)


def _put_job(state: State, cmd: c.PutJob) -> dict[str, Any] | Unchanged:
    # validate_spec checked the spec's values before it was proposed; a command read from the log is only
    # checked for its shape (every field of the JobSpec record, its type, no unknown field), so nothing that
    # apply, the scheduler or an agent reads later can fail half-way
    try:
        spec = resolve_image(state.images, from_wire(JobSpec, cmd.spec))
    except RecordError as exc:
        raise Reject("invalid", f"spec field {exc.field}: {exc.message}" if exc.field else exc.message,
                     exc.field or "spec") from None
    name = spec.name
    job = state.jobs.get(name)
    if cmd.cas is not None:
        current = job.modify_index if job else 0
        _need(current == cmd.cas, "cas_failed",
              f"job {name} is at index {current}, not {cmd.cas}", "cas")
    if job is not None and job.status == "running" and _current_spec(job) == spec:
        # identical resubmission: nothing changes (like `nomad job run` of the same file)
        return Unchanged({"name": name, "version": job.version, "job_index": job.modify_index,
                          "image_digest": spec.image_digest, "unchanged": True})
    idx = _bump(state, "jobs")
    versions = job.versions if job is not None else ()
    version = (versions[-1].version + 1) if versions else 1
    versions += (JobVersion(version=version, spec=spec, submitted_at=cmd.at, index=idx, stable=False),)
    _touch_versions(state, name, {version})  # a plan may have placed a version before it existed (none normally)
    if job is None:
        job = Job(name=name, version=version, versions=versions, status="running", replicas=spec.replicas,
                  pending_reason=None, create_index=idx, modify_index=idx)
    else:
        job = replace(job, version=version, versions=versions, status="running", replicas=spec.replicas,
                      modify_index=idx)
    state.jobs[name] = _pruned(state, job)
    digest = spec.image_digest
    image = spec.image if digest in (None, spec.image) else f"{spec.image} = {digest}"
    _event(state, cmd.at, "job.version", f"job {name} version {version} submitted (image {image}"
           + (", not pushed" if digest is None else "") + ")", job=name)
    return {"name": name, "version": version, "job_index": idx, "image_digest": digest}


def _delete_job(state: State, cmd: c.DeleteJob) -> dict[str, Any]:
    job = _job(state, cmd.name)
    idx = _bump(state, "jobs", "placements")
    state.jobs[cmd.name] = replace(job, status="dead", replicas=0, modify_index=idx)
    stopped = 0
    for p in state.job_placements(cmd.name):
        if p.desired == "run":
            _unpublish(state, p)
            _set_placement(state, p, cmd.at, desired="stop", reason="job stopped")
            stopped += 1
    if cmd.purge:  # every placement of the job loses its spec in its agent's assignments
        for p in state.job_placements(cmd.name):
            state.touch_machine(p.machine)
        del state.jobs[cmd.name]
        state.deployments.pop(cmd.name, None)
    _event(state, cmd.at, "job.stop", f"job {cmd.name} stopped ({stopped} replicas to stop)"
           + (", purged" if cmd.purge else ""), job=cmd.name)
    return {"name": cmd.name, "stopping": stopped}


def _scale_job(state: State, cmd: c.ScaleJob) -> dict[str, Any]:
    job = _job(state, cmd.name)
    _need(job.status == "running", "conflict", f"job {cmd.name} is stopped", "name")
    _need(0 <= cmd.replicas <= 10000, "invalid", "replicas must be between 0 and 10000", "replicas")
    before = job.replicas
    idx = _bump(state, "jobs")
    state.jobs[cmd.name] = replace(job, replicas=cmd.replicas, modify_index=idx)
    _event(state, cmd.at, "job.scale", f"job {cmd.name} scaled {before} -> {cmd.replicas}"
           + (f": {cmd.reason}" if cmd.reason else ""), job=cmd.name)
    return {"name": cmd.name, "replicas": cmd.replicas, "previous": before}


def _rollback_job(state: State, cmd: c.RollbackJob) -> dict[str, Any]:
    job = _job(state, cmd.name)
    old = next((v for v in job.versions if v.version == cmd.version), None)
    old = _found(old, "not_found", f"job {cmd.name} has no version {cmd.version}", "version")
    _need(cmd.version != job.version, "conflict", f"version {cmd.version} is already current", "version")
    idx = _bump(state, "jobs")
    version = job.versions[-1].version + 1
    new = JobVersion(version=version, spec=old.spec, submitted_at=cmd.at, index=idx, stable=False,
                     rollback_of=cmd.version)
    _touch_versions(state, cmd.name, {version})
    state.jobs[cmd.name] = _pruned(state, replace(job, version=version, versions=job.versions + (new,),
                                                  status="running", replicas=old.spec.replicas, modify_index=idx))
    _event(state, cmd.at, "job.rollback", f"job {cmd.name} rolled back to version {cmd.version} as {version}", job=cmd.name)
    return {"name": cmd.name, "version": version, "rollback_of": cmd.version}


def _register_machine(state: State, cmd: c.RegisterMachine) -> dict[str, Any]:
    _need(bool(MACHINE_RE.match(cmd.machine)), "invalid", "machine id must match [A-Za-z0-9._-]{1,63}", "id")
    _need(bool(cmd.address), "invalid", "machine address is required", "address")
    for k in ("cpu", "memory", "pids"):
        v = cmd.resources.get(k)
        _need(isinstance(v, int) and not isinstance(v, bool) and v > 0, "invalid", f"resources.{k} must be a positive integer", f"resources.{k}")
    _need(len(cmd.ports) == 2 and all(_is_int(x) for x in cmd.ports) and 0 < cmd.ports[0] <= cmd.ports[1] < 65536,
          "invalid", "ports must be [lo, hi] within 1..65535", "ports")
    old = state.machines.get(cmd.machine)
    subnet = old.subnet if old is not None and isinstance(old.subnet, str) else None
    # new, registered before subnets existed, or the pool was exhausted when it registered; only a machine whose
    # runtime makes network namespaces routes containers (a sim or process fleet takes no subnet and wakes no one)
    if subnet is None and cmd.runtime in BRIDGE_RUNTIMES:
        try:
            subnet = allocate_subnet(cmd.pool or DEFAULT_POOL, state.subnets)
        except PoolError as exc:
            raise Reject("invalid", f"pool: {exc}", "pool") from None
    wire = {"id": cmd.machine, "address": cmd.address, "fault_domain": cmd.fault_domain, "labels": cmd.labels,
            "resources": cmd.resources, "ports": cmd.ports, "runtime": cmd.runtime, "api": cmd.api, "subnet": subnet,
            "status": "up", "registered_at": cmd.at, "create_index": 0, "modify_index": 0,
            "last_transition": cmd.at if not old or old.status != "up" else old.last_transition}
    try:  # the record's types (a label's value is text...): a snapshot must restore what apply stored
        m = from_wire(Machine, wire)
    except RecordError as exc:
        raise Reject("invalid", f"{exc.field}: {exc.message}", exc.field) from None
    idx = _bump(state, "machines")
    key = subnet_key(subnet) if subnet else None
    if key is not None:
        state.subnets.add(key)
    m = replace(m, create_index=old.create_index if old else idx, modify_index=idx)
    if old is not None:
        m = replace(m, drain=old.drain, eligible=old.eligible)
    state.machines[cmd.machine] = m
    state.touch_machine(cmd.machine)
    if subnet and (old is None or (old.subnet, old.address) != (subnet, cmd.address)):
        for other, om in state.machines.items():  # their agents route to this machine's subnet through its address
            if om.runtime in BRIDGE_RUNTIMES:
                state.touch_machine(other)
    if old is None or old.status != "up":
        _event(state, cmd.at, "machine.up", f"machine {cmd.machine} registered and up", machine=cmd.machine)
    return {"machine": cmd.machine, "subnet": subnet}


def _machine_down(state: State, cmd: c.MachineDown) -> dict[str, Any]:
    m = _found(state.machines.get(cmd.machine), "not_found", f"machine {cmd.machine!r} does not exist", "machine")
    _need(cmd.epoch == 0 or cmd.epoch == state.epoch, "stale_epoch",
          f"proposed by the leader of epoch {cmd.epoch}, current epoch is {state.epoch}", "epoch")
    _need(m.status != "down", "conflict", f"machine {cmd.machine} is already down", "machine")
    idx = _bump(state, "machines", "placements")
    state.silence.pop(cmd.machine, None)
    state.machines[cmd.machine] = replace(m, status="down", last_transition=cmd.at, modify_index=idx)
    state.touch_machine(cmd.machine)
    lost = []
    for p in state.machine_placements(cmd.machine):
        if p.holds_resources():
            _unpublish(state, p)
            _set_placement(state, p, cmd.at, state="lost", health="unknown", reason=f"machine down: {cmd.reason}")
            lost.append(p.id)
    _event(state, cmd.at, "machine.down", f"machine {cmd.machine} down ({cmd.reason}); {len(lost)} placements lost",
           machine=cmd.machine)
    return {"machine": cmd.machine, "lost": lost}


MAX_SILENT = 1000   # machines one MachinesSilent lists (the failover monitor sends the longest-silent ones)


def _machines_silent(state: State, cmd: c.MachinesSilent) -> dict[str, Any]:
    _need(cmd.epoch == state.epoch, "stale_epoch",
          f"proposed by the leader of epoch {cmd.epoch}, current epoch is {state.epoch}", "epoch")
    _need(len(cmd.silent) <= MAX_SILENT, "invalid", f"at most {MAX_SILENT} machines, not {len(cmd.silent)}", "silent")
    for mid, ms in cmd.silent.items():
        _need(isinstance(mid, str) and _is_int(ms) and ms >= 0, "invalid",
              "silent maps a machine id to a whole number of milliseconds (>= 0)", f"silent.{mid}")
    # a machine declared down (or gone) since the leader looked is left out: only up machines are judged
    silence = {mid: cmd.silent[mid] for mid in sorted(cmd.silent)
               if (m := state.machines.get(mid)) is not None and m.status == "up"}
    _bump(state)
    state.silence, state.silence_at = silence, cmd.at
    return {"machines": len(silence)}


def _machine_up(state: State, cmd: c.MachineUp) -> dict[str, Any]:
    m = _found(state.machines.get(cmd.machine), "not_found", f"machine {cmd.machine!r} does not exist", "machine")
    _need(m.status != "up", "conflict", f"machine {cmd.machine} is already up", "machine")
    idx = _bump(state, "machines")
    state.machines[cmd.machine] = replace(m, status="up", last_transition=cmd.at, modify_index=idx)
    state.touch_machine(cmd.machine)
    _event(state, cmd.at, "machine.up", f"machine {cmd.machine} back up", machine=cmd.machine)
    return {"machine": cmd.machine}


def _drain_machine(state: State, cmd: c.DrainMachine) -> dict[str, Any]:
    _need(bool(cmd.machines), "invalid", "no machines to drain", "machines")
    _need_str_list(cmd.machines, "machines")
    for mid in cmd.machines:
        _need(mid in state.machines, "not_found", f"machine {mid!r} does not exist", "machine")
    idx = _bump(state, "machines")
    state.drain_index = idx
    for mid in cmd.machines:
        drain = Drain(since=cmd.at, deadline=cmd.deadline) if cmd.drain else None
        state.machines[mid] = replace(state.machines[mid], drain=drain, modify_index=idx)
        state.touch_machine(mid)
        _event(state, cmd.at, "machine.drain" if cmd.drain else "machine.undrain",
               f"machine {mid} {'draining' if cmd.drain else 'undrained'}", machine=mid)
    return {"machines": list(cmd.machines), "drain": cmd.drain}


def _claim_epoch(state: State, cmd: c.ClaimEpoch) -> dict[str, Any]:
    _need(cmd.term > state.epoch, "stale_epoch", f"term {cmd.term} is not newer than epoch {state.epoch}", "term")
    _bump(state)
    state.epoch = cmd.term
    state.epoch_node = cmd.node
    _event(state, cmd.at, "leader.epoch", f"{cmd.node} leads epoch {cmd.term}")
    return {"epoch": cmd.term}


def _fits(state: State, machine: str, resources: dict[str, int], ports: dict[str, int]) -> str | None:
    """Why a new placement does not fit on ``machine`` now (None if it fits), from the machine's usage index
    (``State.usage``, which each placement a plan adds is counted in at once)."""
    m = state.machines.get(machine)
    if m is None:
        return f"machine {machine} does not exist"
    if m.status != "up":
        return f"machine {machine} is down"
    if m.drain is not None or not m.eligible:
        return f"machine {machine} is not schedulable"
    u = state.usage.get(machine, NO_USAGE)
    capacity = m.resources
    for k, used in (("cpu", u.cpu), ("memory", u.memory), ("pids", u.pids)):
        if used + resources.get(k, 0) > capacity[k]:
            return f"insufficient {k} on {machine}"
    taken = u.ports
    lo, hi = m.ports
    for port in ports.values():
        if port in taken:
            return f"port {port} already in use on {machine}"
        if not lo <= port <= hi:
            return f"port {port} outside {machine}'s range {lo}-{hi}"
    return None


def _bridged(spec: JobSpec, machine: Machine) -> bool:
    """Whether a placement of ``spec`` on ``machine`` gets a network namespace and an address of its own: a bridge
    job on a machine whose runtime makes namespaces (runc). The process and sim runtimes run every job on the
    machine's network (the process driver says loudly at start that it isolates nothing)."""
    return spec.network == "bridge" and machine.runtime in BRIDGE_RUNTIMES


def _container_address(state: State, m: Machine, addresses: dict[str, set[str]]) -> tuple[str, str]:
    """("", the lowest free address of machine ``m``'s subnet) for a new bridge placement, added to ``addresses``
    (held per machine, computed once per plan), or (why not, "")."""
    subnet = m.subnet if isinstance(m.subnet, str) else None
    if not subnet:
        return (f"machine {m.id} has no container subnet (the subnet pool was exhausted when it registered, or it "
                "registered before subnets existed): it gets one when its agent registers again"), ""
    held = addresses.get(m.id)
    if held is None:
        held = addresses[m.id] = {
            p.address for p in (state.placements[pid] for pid in state.by_machine.get(m.id, ())) if p.holds_resources()}
    address = allocate_address(subnet, held)
    if address is None:
        return f"no free container address left in {m.id}'s subnet {subnet}", ""
    held.add(address)
    return "", address


def _items(kind: type[R], items: list[Any], name: str) -> list[R]:
    """A command's list of ``kind`` records, from_wire at the command's boundary (a malformed item rejects it)."""
    try:
        return list_from_wire(kind, items, name)
    except RecordError as exc:
        raise Reject("invalid", str(exc), exc.field) from None


def _plan(state: State, cmd: c.Plan) -> dict[str, Any]:
    _need(cmd.epoch == state.epoch, "stale_epoch",
          f"plan from epoch {cmd.epoch}, current epoch is {state.epoch}", "epoch")
    place = _items(PlanItem, cmd.place, "place")
    stop = _items(PlanStop, cmd.stop, "stop")
    for name, reason in cmd.pending.items():
        _need(isinstance(name, str) and isinstance(reason, str), "invalid",
              "pending must map job names to reasons (strings)", "pending")
    idx = _bump(state, "placements")
    placed, rejected, stopped = [], [], []
    placements, jobs, by_job = state.placements, state.jobs, state.by_job
    # (replica, version) slots held per job, computed once per plan and kept up to date as it places:
    # scanning the job's placements for every item made a plan of n items cost O(n^2) on the tick thread
    taken: dict[str, set[tuple[int, int]]] = {}
    addresses: dict[str, set[str]] = {}  # container addresses held per machine, as usage
    for i, item in enumerate(place):
        job = jobs.get(item.job)
        if job is None or job.status != "running":
            rejected.append({"item": i, "reason": f"job {item.job} is not running"})
            continue
        slots = taken.get(job.name)
        if slots is None:
            slots = taken[job.name] = {
                (p.replica, p.version) for p in (placements[pid] for pid in by_job.get(job.name, ()))
                if p.desired == "run" and p.holds_resources()}
        if (item.replica, item.version) in slots or item.replica >= job.replicas + job.surge_slots:
            rejected.append({"item": i, "reason": f"replica {item.replica} of {job.name} is already placed or not wanted"})
            continue
        why = _fits(state, item.machine, item.resources, item.ports)
        if why:
            rejected.append({"item": i, "reason": why})
            continue
        m = state.machines[item.machine]
        address = m.address
        spec = job.spec_of(item.version)
        if spec is not None and _bridged(spec, m):
            why, address = _container_address(state, m, addresses)
            if why:
                rejected.append({"item": i, "reason": why})
                continue
        state.seq["placement"] += 1
        pid = f"{job.name}-{state.seq['placement']:05d}"
        p = Placement(id=pid, job=job.name, version=item.version, replica=item.replica, machine=item.machine,
                      resources=item.resources, ports=item.ports, address=address,
                      desired="run", state="pending", health="unknown", exit_code=None, reason="",
                      created_at=cmd.at, updated_at=cmd.at, create_index=idx, modify_index=idx)
        state.put_placement(p)   # counted in the machine's usage at once: the next item's _fits sees it
        state.touch_machine(p.machine)
        state.touch_job(p.job)
        slots.add((item.replica, item.version))
        placed.append(pid)
    for s in stop:
        gone = placements.get(s.placement)
        if gone is None or gone.desired == "stop":
            continue
        _unpublish(state, gone)
        _set_placement(state, gone, cmd.at, desired="stop", reason=s.reason)
        stopped.append(gone.id)
    for name, reason in sorted(cmd.pending.items()):
        job = jobs.get(name)
        if job is not None and job.pending_reason != (reason or None):
            jobs[name] = replace(job, pending_reason=reason or None)
            if reason:
                _event(state, cmd.at, "job.pending", f"job {name} pending: {reason}", job=name)
    if placed or stopped:
        _event(state, cmd.at, "plan", f"placed {len(placed)}, stopped {len(stopped)}, rejected {len(rejected)}")
    return {"placed": placed, "stopped": stopped, "rejected": rejected}


def _placement_update(state: State, cmd: c.PlacementUpdate) -> dict[str, Any]:
    p = _found(state.placements.get(cmd.placement), "not_found", f"placement {cmd.placement!r} does not exist",
               "placement")
    _need(p.machine == cmd.machine, "forbidden", f"placement {cmd.placement} is not on machine {cmd.machine}", "machine")
    _need(cmd.state in PLACEMENT_STATES, "invalid", f"unknown state {cmd.state!r}", "state")
    _need(cmd.health in HEALTH_STATES + ("",), "invalid", f"unknown health {cmd.health!r}", "health")
    _need(p.state not in ("lost", "stopped") or cmd.state == "stopped", "conflict",
          f"placement {cmd.placement} is {p.state}", "placement")
    idx = _bump(state, "placements")
    health = cmd.health or p.health
    if cmd.state != "running":
        health = "unknown"
    if health != "healthy":
        healthy_at = None
    elif p.health == "healthy":
        healthy_at = p.healthy_at or cmd.at   # UNSET and None are false
    else:
        healthy_at = cmd.at
    p = _set_placement(state, p, cmd.at, state=cmd.state, health=health, exit_code=cmd.exit_code,
                       reason=cmd.reason or p.reason, healthy_at=healthy_at)
    job = state.jobs.get(p.job)
    if p.desired == "run" and health == "healthy" and job and job.status == "running" and not p.retiring_at:
        spec = job.spec_of(p.version)
        if spec is not None:
            _publish(state, p, spec)
    else:
        _unpublish(state, p)
    if cmd.state in ("exited", "oom_killed", "stopped"):
        _event(state, cmd.at, f"placement.{cmd.state}", f"{p.id} on {p.machine} {cmd.state}"
               + (f" (code {cmd.exit_code})" if cmd.exit_code is not None else ""), job=p.job, machine=p.machine)
    if cmd.state == "stopped" and p.desired == "stop":
        state.drop_placement(p.id)
        state.touch_job(p.job)
    return {"placement": cmd.placement, "state": cmd.state, "health": health, "index": idx}


def _retire(state: State, cmd: c.Retire) -> dict[str, Any]:
    _need(cmd.epoch == state.epoch, "stale_epoch", f"from epoch {cmd.epoch}, current epoch is {state.epoch}", "epoch")
    _need_str_list(cmd.placements, "placements")
    for pid in cmd.placements:
        _need(pid in state.placements, "not_found", f"placement {pid!r} does not exist", "placements")
    _bump(state, "placements")
    done = []
    for pid in cmd.placements:
        p = state.placements[pid]
        if p.retiring_at or p.desired != "run":
            continue
        _unpublish(state, p)
        _set_placement(state, p, cmd.at, retiring_at=cmd.at, reason=cmd.reason)
        done.append(pid)
    if done:
        _event(state, cmd.at, "placement.retire", f"unpublished {', '.join(done)} ahead of stop: {cmd.reason}",
               job=state.placements[done[0]].job)
    return {"retired": done}


def _set_deployment(state: State, cmd: c.SetDeployment) -> dict[str, Any]:
    _need(cmd.epoch == state.epoch, "stale_epoch", f"from epoch {cmd.epoch}, current epoch is {state.epoch}", "epoch")
    job = _job(state, cmd.job)
    try:
        dep = from_wire(Deployment, cmd.deployment)
    except RecordError as exc:
        where = f"deployment.{exc.field}" if exc.field else "deployment"
        raise Reject("invalid", f"{where}: {exc.message}", where) from None
    _need(dep.surge_slots >= 0, "invalid", "deployment.surge must be an integer >= 0", "deployment.surge")
    _bump(state, "deployments", "jobs")
    state.deployments[cmd.job] = dep
    versions = job.versions
    if dep.status == "successful":
        versions = tuple(replace(v, stable=True) if v.version == dep.version else v for v in versions)
    state.jobs[cmd.job] = replace(job, surge=dep.surge_slots if dep.status == "running" else 0, versions=versions,
                                  modify_index=state.index)
    if cmd.message:
        _event(state, cmd.at, "deploy", cmd.message, job=cmd.job)
    return {"job": cmd.job, "status": dep.status}


def _create_token(state: State, cmd: c.CreateToken) -> dict[str, Any]:
    _need(bool(re.fullmatch(r"[0-9a-f]{64}", cmd.hash)), "invalid", "hash must be sha256 hex", "hash")
    _need(cmd.role in ROLES, "invalid", f"role must be one of {', '.join(ROLES)}", "role")
    _need(bool(cmd.name), "invalid", "token name is required", "name")
    _need(cmd.hash not in state.tokens, "conflict", "token already exists", "hash")
    _need(all(t["name"] != cmd.name for t in state.tokens.values()), "conflict",
          f"a token named {cmd.name!r} already exists", "name")
    _need(cmd.role != "agent" or bool(cmd.machine), "invalid", "an agent token names its machine", "machine")
    idx = _bump(state, "tokens")
    state.tokens[cmd.hash] = {"hash": cmd.hash, "role": cmd.role, "name": cmd.name, "machine": cmd.machine,
                              "created_at": cmd.at, "create_index": idx}
    _event(state, cmd.at, "token.create", f"token {cmd.name} ({cmd.role}) created")
    return {"name": cmd.name, "role": cmd.role}


def _revoke_token(state: State, cmd: c.RevokeToken) -> dict[str, Any]:
    found = [h for h, t in state.tokens.items() if t["name"] == cmd.name]
    _need(bool(found), "not_found", f"no token named {cmd.name!r}", "name")
    _bump(state, "tokens")
    for h in found:
        del state.tokens[h]
    _event(state, cmd.at, "token.revoke", f"token {cmd.name} revoked")
    return {"name": cmd.name}


def _put_image(state: State, cmd: c.PutImage) -> dict[str, Any]:
    _need(bool(IMAGE_NAME_RE.fullmatch(cmd.name)), "invalid",
          "image name must be name:tag", "name")
    _need(bool(DIGEST_RE.fullmatch(cmd.digest)), "invalid", "digest must be sha256:<64 hex>", "digest")
    _need(cmd.size >= 0, "invalid", "size must be >= 0", "size")
    old = state.images.get(cmd.name)
    idx = _bump(state, "images")
    state.images[cmd.name] = Image(name=cmd.name, digest=cmd.digest, size=cmd.size,
                                   create_index=old.create_index if old else idx, modify_index=idx)
    return {"name": cmd.name, "digest": cmd.digest}


def _set_member(state: State, cmd: c.SetMember) -> dict[str, Any] | None:
    _need(bool(cmd.raft), "invalid", "raft address is required", "raft")
    new: dict[str, Any] = {"raft": cmd.raft, "api": cmd.api, "id": cmd.node}
    old = state.members.get(cmd.raft)
    if old is not None and {k: old[k] for k in new} == new:
        return None
    idx = _bump(state, "members")
    new["create_index"] = old["create_index"] if old else idx
    new["modify_index"] = idx
    state.members[cmd.raft] = new
    return {"raft": cmd.raft}


def _remove_member(state: State, cmd: c.RemoveMember) -> dict[str, Any]:
    _need(cmd.raft in state.members, "not_found", f"no member {cmd.raft}", "raft")
    _bump(state, "members")
    del state.members[cmd.raft]
    _event(state, cmd.at, "member.remove", f"member {cmd.raft} removed")
    return {"raft": cmd.raft}


HANDLERS: dict[type, Callable[[State, Any], Any]] = {
    c.Noop: _noop, c.PutJob: _put_job, c.DeleteJob: _delete_job, c.ScaleJob: _scale_job,
    c.RollbackJob: _rollback_job, c.RegisterMachine: _register_machine, c.MachineDown: _machine_down,
    c.MachinesSilent: _machines_silent, c.MachineUp: _machine_up, c.DrainMachine: _drain_machine, c.ClaimEpoch: _claim_epoch,
    c.Plan: _plan, c.PlacementUpdate: _placement_update, c.CreateToken: _create_token,
    c.RevokeToken: _revoke_token, c.PutImage: _put_image, c.SetMember: _set_member,
    c.RemoveMember: _remove_member, c.Retire: _retire, c.SetDeployment: _set_deployment,
}
