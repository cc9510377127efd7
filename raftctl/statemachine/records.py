"""Typed records: the one vocabulary of everything replicated or exchanged (issue 14).

Each record is an immutable ``msgspec.Struct`` whose wire form is exactly the dict a table holds today
(docs/state.md), so ``to_wire(from_wire(T, x)) == x`` and snapshots stay byte-identical canonical CBOR.
Conversion happens at one boundary: :func:`from_wire` (strict: no int for str, no bool for int, no unknown
field; a problem raises :class:`RecordError` naming the field path) and :func:`to_wire`.

Durations are one unit type, :data:`Millis` (integer milliseconds). On the wire their keys keep the ``_ms``
suffix of the stored shape (``interval_ms``); in Python the attribute is the plain name
(``spec.health.interval``), so no consumer re-derives the unit from a key name.

The shared knowledge that used to be copied between packages lives here once: :data:`LEVELS`,
:data:`NAME_RE`, :data:`IMAGE_RE`, :func:`holds_resources` and the records' methods (``Job.spec_of``,
``Placement.holds_resources``, ``Machine.state``). The state's tables hold these records (state.py); the wire
form is for snapshots, commands and API answers only.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Final, Iterable, Literal, Mapping, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType, field

from raftctl.errors import ValidationError

# -- shared vocabulary ------------------------------------------------------------------------------------------

LEVELS: Final = ("region", "zone", "rack")                       # fault-domain levels, widest first
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"               # jobs and services
IMAGE_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._/-]{0,127}:[A-Za-z0-9._-]{1,64}$"   # a pushed name:tag
DIGEST_PATTERN: Final = r"^sha256:[0-9a-f]{64}$"
IMAGE_PATTERN: Final = r"^(sha256:[0-9a-f]{64}|[a-z0-9][a-z0-9._/-]{0,127}:[A-Za-z0-9._-]{1,64})$"  # a spec's image
NAME_RE: Final = re.compile(NAME_PATTERN)
IMAGE_RE: Final = re.compile(IMAGE_PATTERN)
IMAGE_NAME_RE: Final = re.compile(IMAGE_NAME_PATTERN)
DIGEST_RE: Final = re.compile(DIGEST_PATTERN)

PlacementState = Literal["pending", "starting", "running", "exited", "oom_killed", "lost", "stopped"]
HealthState = Literal["unknown", "healthy", "unhealthy"]
PLACEMENT_STATES: Final = ("pending", "starting", "running", "exited", "oom_killed", "lost", "stopped")
HEALTH_STATES: Final = ("unknown", "healthy", "unhealthy")
# Placements that no longer hold resources: lost (declared gone by the control plane) and stopped (nothing more to
# run or to report). Their machine's agent does not run them (agent/converge.py), so a change into or out of them
# wakes its assignment watch; the other states, health, exit code, reason and times are the agent's own reports,
# and a change to those alone does not (apply._wakes_agent).
RELEASED_STATES: Final = frozenset({"lost", "stopped"})
MACHINE_STATES: Final = ("active", "draining", "drained", "down", "maintenance")

REASON_MAX: Final = 300                                          # characters of a report's reason

# integer milliseconds: the one duration unit of every record
Millis = Annotated[int, Meta(description="milliseconds")]


def seconds(ms: int) -> float:
    """A :data:`Millis` value in seconds (what asyncio and the runtimes take)."""
    return ms / 1000


def holds_resources(placement_state: str) -> bool:
    """Whether a placement in this state still holds its machine's resources (and ports)."""
    return placement_state not in RELEASED_STATES


# -- records ---------------------------------------------------------------------------------------------------

class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every record: immutable, keyword-only, and no field the record does not know."""


# ---- the normalized job spec (what validate_spec produces and a job version stores) ----

class Resources(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cpu: Annotated[int, Meta(description="millicores")] = 100
    memory: Annotated[int, Meta(description="bytes")] = 64 << 20
    pids: int = 256

    def amounts(self) -> dict[str, int]:
        """``{cpu, memory, pids}``: what a placement of this spec holds (its ``resources``)."""
        return {"cpu": self.cpu, "memory": self.memory, "pids": self.pids}


class Port(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    static: int | None = None
    to: int | None = None
    publish: bool = False        # bridge jobs: DNAT the host port on the machine address to the container


def container_port(port: Port, allocated: int) -> int:
    """The port a bridge container listens on for ``port`` (a spec's port): its ``to``, else the host port the
    scheduler allocated (the number its PORT_<NAME> variable holds)."""
    return port.to if port.to is not None else allocated


class Health(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["http", "tcp", "exec"]
    port: str | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    interval: Millis = field(default=1000, name="interval_ms")
    timeout: Millis = field(default=1000, name="timeout_ms")
    failures: int = 3
    grace: Millis = field(default=0, name="grace_ms")


class Restart(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    policy: Literal["always", "on-failure", "never"] = "always"
    initial: Millis = field(default=100, name="initial_ms")
    max: Millis = field(default=10_000, name="max_ms")
    reset: Millis = field(default=60_000, name="reset_ms")


class Update(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_unavailable: int = 1
    max_surge: int = 0
    min_healthy: Millis = field(default=1000, name="min_healthy_ms")
    deadline: Millis = field(default=300_000, name="deadline_ms")
    auto_revert: bool = True
    drain_delay: Millis = field(default=1000, name="drain_delay_ms")
    canary: int = 0
    auto_promote: bool = False


class Spread(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["region", "zone", "rack"]
    mode: Literal["hard", "soft"] = "soft"


class Constraint(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    attr: str
    op: Literal["==", "!=", "in", "not_in", "exists", "not_exists", "regex"] = "=="
    value: str | tuple[str, ...] | None = None


class Autoscale(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min: int = 1
    max: int
    metric: str = "cpu"
    target: float
    cooldown: Millis = field(default=30_000, name="cooldown_ms")
    stabilization: Millis = field(default=60_000, name="stabilization_ms")
    tolerance: float = 0.1


class Disruption(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_unavailable: int = 1


class PreStop(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exec: tuple[str, ...]
    timeout: Millis = field(default=30_000, name="timeout_ms")


class Lifecycle(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pre_stop: PreStop | None = None


class JobSpec(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A normalized job spec (docs/state.md). Defaults are those validate_spec fills in; the name is the only
    field checked beyond its type here (apply stores it as a table key)."""

    name: Annotated[str, Meta(pattern=NAME_PATTERN)]
    image: str
    image_digest: str | None | UnsetType = UNSET   # set by apply when a version is stored
    base: Literal["host", "scratch"] = "host"
    command: tuple[str, ...]
    env: dict[str, str] = {}
    user: str | None = None
    replicas: int
    resources: Resources = Resources()
    network: Literal["host", "bridge"] = "host"
    egress: Literal["masquerade", "none"] = "masquerade"
    ports: tuple[Port, ...] = ()
    health: Health | None = None
    restart: Restart = Restart()
    update: Update = Update()
    spread: tuple[Spread, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    autoscale: Autoscale | None = None
    disruption: Disruption = Disruption()
    lifecycle: Lifecycle = Lifecycle()
    priority: int = 50
    service: str | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def service_name(self) -> str:
        """The discovery name endpoints are published under."""
        return self.service if self.service is not None else self.name

    @property
    def first_port(self) -> str | None:
        """The port discovery publishes (the first one), if any."""
        return self.ports[0].name if self.ports else None


class JobVersion(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int
    spec: JobSpec
    submitted_at: int
    index: int
    stable: bool = False
    rollback_of: int | UnsetType = UNSET


class Job(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: int
    versions: tuple[JobVersion, ...]
    status: Literal["running", "dead"]
    replicas: int
    pending_reason: str | None = None
    surge: int | UnsetType = UNSET      # extra slots of a running deploy (set with the deployment)
    create_index: int
    modify_index: int

    def spec_of(self, version: int) -> JobSpec | None:
        """The spec of ``version`` (None if it was pruned from the history)."""
        for v in self.versions:
            if v.version == version:
                return v.spec
        return None

    @property
    def current_spec(self) -> JobSpec | None:
        return self.spec_of(self.version)

    @property
    def surge_slots(self) -> int:
        """Extra replica slots of a running deploy (0 when no deploy set any)."""
        return 0 if isinstance(self.surge, UnsetType) else self.surge


class Placement(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    job: str
    version: int
    replica: int
    machine: str
    resources: dict[str, int]
    ports: dict[str, int]
    address: str
    desired: Literal["run", "stop"]
    state: PlacementState
    health: HealthState
    exit_code: int | None
    reason: str
    created_at: int
    updated_at: int
    healthy_at: int | None | UnsetType = UNSET     # set by the first agent report
    retiring_at: int | UnsetType = UNSET           # unpublished ahead of a planned stop
    create_index: int
    modify_index: int

    def holds_resources(self) -> bool:
        return holds_resources(self.state)

    def is_live(self) -> bool:
        """Wanted and holding resources: it covers its replica slot."""
        return self.desired == "run" and holds_resources(self.state)


class Drain(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    since: int
    deadline: int | None = None


class Machine(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    address: str
    fault_domain: dict[str, str]
    labels: dict[str, str]
    resources: dict[str, int]
    ports: tuple[int, int]
    runtime: str
    api: str | UnsetType = UNSET        # the agent's own endpoint (absent in machines registered before it existed)
    subnet: str | None | UnsetType = UNSET   # its container /24: None while the pool was exhausted at registration,
                                             # absent in machines registered before subnets (both: next registration)
    status: Literal["up", "down"]
    drain: Drain | None = None
    eligible: bool = True
    registered_at: int
    last_transition: int
    create_index: int
    modify_index: int

    def state(self, live_here: bool) -> str:
        """The operator-facing state (down, draining/drained, maintenance or active), given whether a placement
        still holds resources here."""
        if self.status == "down":
            return "down"
        if self.drain is not None:
            return "draining" if live_here else "drained"
        if not self.eligible:
            return "maintenance"
        return "active"


class Deployment(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The current rolling deploy of a job (written by the deploy controller through SetDeployment)."""

    job: str | UnsetType = UNSET
    version: int | None | UnsetType = UNSET
    status: str
    started_at: int | UnsetType = UNSET
    deadline: int | UnsetType = UNSET
    total: int | UnsetType = UNSET
    surge: int | UnsetType = UNSET
    canary: int | UnsetType = UNSET
    promoted: bool | UnsetType = UNSET
    finished_at: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    held: str | None | UnsetType = UNSET

    @property
    def surge_slots(self) -> int:
        return 0 if isinstance(self.surge, UnsetType) else self.surge


class Image(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    digest: str
    size: int
    create_index: int
    modify_index: int


# ---- exchanged: plans and agent reports ----

class PlanItem(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One new placement of a Plan command."""

    job: str
    version: int
    replica: Annotated[int, Meta(ge=0)]
    machine: str
    resources: dict[str, Annotated[int, Meta(ge=0)]]
    ports: dict[str, Annotated[int, Meta(ge=1, le=65535)]]


class PlanStop(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    placement: str
    reason: str = ""


class ReportUpdate(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An agent's observed transition of one placement."""

    placement: str
    state: PlacementState
    health: HealthState | Literal[""] = ""
    exit_code: int | None = None
    reason: Annotated[str, Meta(max_length=REASON_MAX)] = ""


class Report(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/agent/report``."""

    machine: str
    updates: Annotated[tuple[ReportUpdate, ...], Meta(max_length=1000)]


class Registration(Record, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/agent/register``: the agent's machine as it registers (apply checks the values)."""

    machine: str
    address: str
    fault_domain: dict[str, str] = {}
    labels: dict[str, str] = {}
    resources: dict[str, int]
    ports: tuple[int, int]
    runtime: str = ""
    api: str = ""          # the agent's own endpoint (cut to 200 characters)
    pool: str = ""         # where its container subnet comes from ("": subnets.DEFAULT_POOL; cut to 64)


# -- the boundary ----------------------------------------------------------------------------------------------

T = TypeVar("T")


class RecordError(ValidationError):
    """A wire value that is not a valid record; ``field`` is its path (``resources.cpu``, ``ports[0].name``)."""

    code = "invalid"


def _path(message: str) -> tuple[str, str]:
    """(field path, message) from a msgspec error text ``... - at `$.a.b[0]```."""
    m = re.match(r"^(.*) - at `(key` in `)?\$(.*)`$", message, re.S)
    text, where = (m.group(1) + (" (a key)" if m.group(2) else ""), m.group(3)) if m else (message, "")
    path = where.lstrip(".")
    for pattern, reason in ((r"Object contains unknown field `(.*)`$", "unknown field"),
                            (r"Object missing required field `(.*)`$", "is required")):
        m = re.match(pattern, text)
        if m:
            return (f"{path}.{m.group(1)}" if path else m.group(1)), reason
    return path, text


def from_wire(kind: type[T], obj: Any) -> T:
    """The record ``kind`` from its wire (dict) form, strictly; :class:`RecordError` names the bad field."""
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        where, message = _path(str(exc))
        raise RecordError(message, field=where or None) from None


def to_wire(record: msgspec.Struct) -> dict[str, Any]:
    """The dict a table (and canonical CBOR) holds for ``record``: lists where the record holds tuples, no
    field left UNSET (msgpack's round trip in C: faster than walking to_builtins' output for tuples)."""
    out: dict[str, Any] = _unpack(_pack(record))
    return out


def table_to_wire(table: Mapping[str, msgspec.Struct]) -> dict[str, dict[str, Any]]:
    """:func:`to_wire` of every record of a table at once (one encode and decode in C: a snapshot's tables)."""
    out: dict[str, dict[str, Any]] = _unpack(_pack(table))
    return out


def list_to_wire(records: Iterable[msgspec.Struct]) -> list[dict[str, Any]]:
    """:func:`to_wire` of each record, in one call (an API answer's list, a Plan command's items)."""
    out: list[dict[str, Any]] = _unpack(_pack(list(records)))
    return out


R = TypeVar("R", bound=msgspec.Struct)


TABLE_CHUNK: Final = 2048   # rows per conversion call of a big table


def table_from_wire(kind: type[R], obj: Any) -> dict[str, R]:
    """A whole table (``{key: wire dict}``) as records of ``kind``, strictly (restore's boundary). A big table is
    converted a chunk of rows per call, so a restore on a worker thread returns to the interpreter (which may
    hand the GIL to the raft tick thread) every few ms rather than once."""
    if not isinstance(obj, dict):
        raise RecordError(f"a table must be a map, not {type(obj).__name__}")
    kind_table = dict[str, kind]  # type: ignore[valid-type]
    try:
        if len(obj) <= TABLE_CHUNK:
            out: dict[str, R] = msgspec.convert(obj, kind_table)
            return out
        items = list(obj.items())
        out = {}
        for i in range(0, len(items), TABLE_CHUNK):
            out.update(msgspec.convert(dict(items[i:i + TABLE_CHUNK]), kind_table))
        return out
    except msgspec.ValidationError as exc:
        where, message = _path(str(exc))
        raise RecordError(message, field=where or None) from None


def list_from_wire(kind: type[R], obj: Any, name: str) -> list[R]:
    """A list of records of ``kind`` (a command's items), strictly; the error's field is ``name.<i>.<path>``."""
    try:
        out: list[R] = msgspec.convert(obj, list[kind])  # type: ignore[valid-type]
    except msgspec.ValidationError as exc:
        where, message = _path(str(exc))
        m = re.match(r"\[(\d+)\]\.?(.*)$", where)
        field_ = f"{name}.{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "") if m else (where or name)
        raise RecordError(message, field=field_) from None
    return out


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode
