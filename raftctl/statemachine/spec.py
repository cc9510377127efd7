"""Job specs: parse YAML, JSON or TOML; validate every field; normalize (docs/state.md).

``validate_spec`` reports every problem at once, each with its field path and
the reason (``resources.memory: "64MB" is not a size; use 64Mi``), and returns
the normalized spec: defaults filled in, durations in ms, sizes in bytes, CPU
in millicores. ``denormalize`` turns a normalized spec back into the user form.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable, Literal, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from raftctl import gate
from raftctl.errors import ValidationError
from raftctl.scheduler.pipeline import RegexError, compile_regex
from raftctl.statemachine.records import IMAGE_RE, LEVELS, NAME_RE
from raftctl.statemachine.units import format_cpu, format_duration, format_size, parse_cpu, parse_duration, parse_size

PORT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
USER_RE = re.compile(r"^\d{1,10}(:\d{1,10})?$")
CONSTRAINT_OPS = ("==", "!=", "in", "not_in", "exists", "not_exists", "regex")
# The capabilities a job may ask for (Docker's default set); a job gets none unless it lists them.
ALLOWED_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP"})


# -- bounds (docs/limits.md lists them; a change here changes that table) -------------------------------------
# Every number a spec holds has a floor and a ceiling that protect the cluster: no restart storm (backoff >= 100ms),
# no health probe storm (interval >= 100ms), no job larger than the scheduler plans in bounded time, no list or
# string longer than any real job needs.

SEC, MINUTE, HOUR = 1000, 60_000, 3_600_000
MAX_REPLICAS = 10_000

# field -> (floor ms, ceiling ms, default ms)
DURATIONS: dict[str, tuple[int, int, int]] = {
    "health.interval": (100, HOUR, SEC),
    "health.timeout": (10, 5 * MINUTE, SEC),
    "health.grace": (0, HOUR, 0),
    "restart.backoff.initial": (100, 5 * MINUTE, 100),
    "restart.backoff.max": (100, HOUR, 10 * SEC),
    "restart.reset": (SEC, 24 * HOUR, MINUTE),
    "update.min_healthy": (0, HOUR, SEC),
    "update.deadline": (SEC, 24 * HOUR, 5 * MINUTE),
    "update.drain_delay": (0, 10 * MINUTE, SEC),
    "autoscale.cooldown": (SEC, 24 * HOUR, 30 * SEC),
    "autoscale.stabilization": (0, 24 * HOUR, MINUTE),
    "lifecycle.pre_stop.timeout": (100, 10 * MINUTE, 30 * SEC),
}

# field -> (floor, ceiling) for integers; cpu in millicores, memory in bytes
INTEGERS: dict[str, tuple[int, int]] = {
    "replicas": (0, MAX_REPLICAS),
    "resources.cpu": (1, 1024 * 1000),
    "resources.memory": (4 << 20, 16 << 40),
    "resources.pids": (1, 1 << 22),
    "ports[].static": (1, 65535),
    "ports[].to": (1, 65535),
    "health.failures": (1, 100),
    "update.max_unavailable": (0, MAX_REPLICAS),
    "update.max_surge": (0, MAX_REPLICAS),
    "update.canary": (0, MAX_REPLICAS),
    "autoscale.min": (0, MAX_REPLICAS),
    "autoscale.max": (1, MAX_REPLICAS),
    "disruption.max_unavailable": (0, MAX_REPLICAS),
    "priority": (0, 100),
}
MAX_AUTOSCALE_TARGET = 1e9

# how many entries each list (or mapping) may hold
MAX_ITEMS: dict[str, int] = {
    "command": 256, "env": 256, "ports": 32, "constraints": 32, "spread": 3, "health.command": 256,
    "lifecycle.pre_stop.exec": 256, "constraints[].value": 256,
}
# how long each string may be, in characters
MAX_CHARS: dict[str, int] = {
    "argument": 4096,          # one argv entry of command, health.command, lifecycle.pre_stop.exec
    "env.name": 256, "env.value": 64 * 1024,
    "health.path": 1024,
    "constraints[].attr": 256, "constraints[].value": 1024,
}


# -- the user form as types (issue 14) ------------------------------------------------------------------------------
# The job spec a user writes, as msgspec Structs whose Meta carries the bounds above: the OpenAPI document's JobSpec
# schema is generated from them (raftctl/node/openapi.py), so the document and the validator share one definition.
# Sizes, CPU and durations are unit types: text a person writes (`64Mi`, `250m`, `1m30s`) or a plain number; the
# normalized form (raftctl.statemachine.records.JobSpec) holds bytes, millicores and Millis.

def _range(key: str) -> msgspec.Meta:
    lo, hi = INTEGERS[key]
    return msgspec.Meta(ge=lo, le=hi)


def _dur(key: str) -> msgspec.Meta:
    lo, hi, default = DURATIONS[key]
    return msgspec.Meta(description=f"a duration from {format_duration(lo)} to {format_duration(hi)} "
                                    f"(default {format_duration(default)}): `500ms`, `1s`, `1m30s`, `2h`, or seconds",
                        extra_json_schema={"x-minimum-ms": lo, "x-maximum-ms": hi, "x-default-ms": default})


def _ms_meta(key: str) -> msgspec.Meta:
    lo, hi, _ = DURATIONS[key]
    return msgspec.Meta(ge=lo, le=hi, description=f"the normalized form of `{key.rsplit('.', 1)[1]}`, in milliseconds")


def _items(key: str) -> msgspec.Meta:
    return msgspec.Meta(max_length=MAX_ITEMS[key])


def _chars(key: str, **kw: Any) -> msgspec.Meta:
    return msgspec.Meta(max_length=MAX_CHARS[key], **kw)


Argument = Annotated[str, _chars("argument")]
DurationText = str | float
SizeText = Annotated[str | int, msgspec.Meta(description="bytes: `64Mi`, `1Gi`, `100M` or a number of bytes")]
CpuText = Annotated[str | float, msgspec.Meta(description="CPU: `250m` (millicores) or a number of cores (`0.5`)")]


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the user-form structs: no field they do not name."""


class ResourcesIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cpu: Annotated[CpuText, msgspec.Meta(extra_json_schema={"x-maximum-millicores": INTEGERS["resources.cpu"][1]})] = "100m"
    memory: Annotated[SizeText, msgspec.Meta(extra_json_schema={"x-minimum-bytes": INTEGERS["resources.memory"][0],
                                                                "x-maximum-bytes": INTEGERS["resources.memory"][1]})] = "64Mi"
    pids: Annotated[int, _range("resources.pids")] = 256


class PortIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=PORT_NAME_RE.pattern)]
    static: Annotated[int, _range("ports[].static")] | None = None
    to: Annotated[int, _range("ports[].to")] | None = None


class HealthIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A health check: http and tcp name one of the job's ports; exec runs a command."""

    type: Literal["http", "tcp", "exec"]
    port: str | None = None
    path: Annotated[str, _chars("health.path", pattern="^/")] = "/"
    command: Annotated[list[Argument], _items("health.command")] | None = None
    interval: Annotated[DurationText, _dur("health.interval")] | UnsetType = UNSET
    timeout: Annotated[DurationText, _dur("health.timeout")] | UnsetType = UNSET
    failures: Annotated[int, _range("health.failures")] = 3
    grace: Annotated[DurationText, _dur("health.grace")] | UnsetType = UNSET
    interval_ms: Annotated[int, _ms_meta("health.interval")] | UnsetType = UNSET
    timeout_ms: Annotated[int, _ms_meta("health.timeout")] | UnsetType = UNSET
    grace_ms: Annotated[int, _ms_meta("health.grace")] | UnsetType = UNSET


class BackoffIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    initial: Annotated[DurationText, _dur("restart.backoff.initial")] | UnsetType = UNSET
    max: Annotated[DurationText, _dur("restart.backoff.max")] | UnsetType = UNSET


class RestartIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    policy: Literal["always", "on-failure", "never"] = "always"
    backoff: BackoffIn | None = None
    reset: Annotated[DurationText, _dur("restart.reset")] | UnsetType = UNSET
    initial_ms: Annotated[int, _ms_meta("restart.backoff.initial")] | UnsetType = UNSET
    max_ms: Annotated[int, _ms_meta("restart.backoff.max")] | UnsetType = UNSET
    reset_ms: Annotated[int, _ms_meta("restart.reset")] | UnsetType = UNSET


class UpdateIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rolling deploys: max_unavailable and max_surge cannot both be 0."""

    max_unavailable: Annotated[int, _range("update.max_unavailable")] = 1
    max_surge: Annotated[int, _range("update.max_surge")] = 0
    min_healthy: Annotated[DurationText, _dur("update.min_healthy")] | UnsetType = UNSET
    deadline: Annotated[DurationText, _dur("update.deadline")] | UnsetType = UNSET
    auto_revert: bool = True
    drain_delay: Annotated[DurationText, _dur("update.drain_delay")] | UnsetType = UNSET
    canary: Annotated[int, _range("update.canary")] = 0
    auto_promote: bool = False
    min_healthy_ms: Annotated[int, _ms_meta("update.min_healthy")] | UnsetType = UNSET
    deadline_ms: Annotated[int, _ms_meta("update.deadline")] | UnsetType = UNSET
    drain_delay_ms: Annotated[int, _ms_meta("update.drain_delay")] | UnsetType = UNSET


class SpreadIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["region", "zone", "rack"]
    mode: Literal["hard", "soft"] = "soft"


class ConstraintIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`in`/`not_in` take a list of strings, `regex` an RE2 pattern, `exists`/`not_exists` no value."""

    attr: Annotated[str, _chars("constraints[].attr")]
    op: Literal["==", "!=", "in", "not_in", "exists", "not_exists", "regex"] = "=="
    value: (Annotated[str, _chars("constraints[].value")]
            | Annotated[list[Annotated[str, _chars("constraints[].value")]], _items("constraints[].value")]
            | float | bool | None) = None


class AutoscaleIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min: Annotated[int, _range("autoscale.min")] = 1
    max: Annotated[int, _range("autoscale.max")]
    metric: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")] = "cpu"
    target: Annotated[float, msgspec.Meta(gt=0, le=MAX_AUTOSCALE_TARGET)]
    cooldown: Annotated[DurationText, _dur("autoscale.cooldown")] | UnsetType = UNSET
    stabilization: Annotated[DurationText, _dur("autoscale.stabilization")] | UnsetType = UNSET
    tolerance: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    cooldown_ms: Annotated[int, _ms_meta("autoscale.cooldown")] | UnsetType = UNSET
    stabilization_ms: Annotated[int, _ms_meta("autoscale.stabilization")] | UnsetType = UNSET


class DisruptionIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_unavailable: Annotated[int, _range("disruption.max_unavailable")] = 1


class PreStopIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exec: Annotated[list[Argument], _items("lifecycle.pre_stop.exec"), msgspec.Meta(min_length=1)]
    timeout: Annotated[DurationText, _dur("lifecycle.pre_stop.timeout")] | UnsetType = UNSET
    timeout_ms: Annotated[int, _ms_meta("lifecycle.pre_stop.timeout")] | UnsetType = UNSET


class LifecycleIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pre_stop: PreStopIn | None = None


class JobSpecIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job spec (DESIGN §6, docs/state.md) as a user writes it in YAML, JSON or TOML. Unknown fields are
    rejected; every problem is reported with its field path in error.details."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_RE.pattern, description="must equal the {name} in the path")]
    image: Annotated[str, msgspec.Meta(pattern=IMAGE_RE.pattern,
                                       description="an imported image `name:tag` or `sha256:<64 hex>`")]
    base: Literal["host", "scratch"] = "host"
    command: Annotated[list[Argument], _items("command"), msgspec.Meta(min_length=1,
                                                                       description="argv, never a shell string")]
    env: Annotated[dict[Annotated[str, _chars("env.name", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
                        Annotated[str, _chars("env.value")] | int | float], _items("env")] = {}
    user: Annotated[str | int, msgspec.Meta(description="uid or uid:gid")] | None = None
    replicas: Annotated[int, _range("replicas")] = 1
    resources: ResourcesIn | None = None
    network: Literal["host", "bridge"] = "host"
    ports: Annotated[list[PortIn], _items("ports")] = []
    health: HealthIn | None = None
    restart: RestartIn | None = None
    update: UpdateIn | None = None
    spread: Annotated[list[SpreadIn], _items("spread")] = []
    constraints: Annotated[list[ConstraintIn], _items("constraints")] = []
    autoscale: AutoscaleIn | None = None
    disruption: DisruptionIn | None = None
    lifecycle: LifecycleIn | None = None
    priority: Annotated[int, _range("priority")] = 50
    service: Annotated[str, msgspec.Meta(pattern=NAME_RE.pattern, description="discovery name; the job's name "
                                                                               "by default")] | None = None
    capabilities: Annotated[list[str], msgspec.Meta(
        max_length=len(ALLOWED_CAPABILITIES),
        description="Linux capabilities from Docker's default set (CHOWN, NET_BIND_SERVICE, ...), with or without "
                    "CAP_; none by default")] = []


class SpecProblem(NamedTuple):
    field: str
    message: str


class SpecError(ValidationError):
    code = "invalid_spec"

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        text = "\n".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
        super().__init__(text if len(problems) > 1 else problems[0].message,
                         field=problems[0].field or None,
                         details=[{"field": p.field, "message": p.message} for p in problems])


def parse_spec(text: str | bytes, fmt: str | None = None) -> Any:
    """The raw mapping of a spec file, decoded through the one gate for untrusted bytes (raftctl/gate.py: bounded
    size, depth and lengths; no YAML aliases or custom tags; no lone surrogates, NaN or huge integers). A syntax
    error names the line, a refused value its field."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise SpecError([SpecProblem("", "the spec is not UTF-8 text")]) from None
    if len(text) > gate.MAX_BYTES:  # before guessing the format: its regexes walk the whole text
        raise SpecError([SpecProblem("", f"the spec is larger than {gate.MAX_BYTES} bytes")])
    fmt = (fmt or _guess(text)).lower()
    fmt = {"yml": "yaml"}.get(fmt, fmt)
    if fmt not in ("yaml", "json", "toml"):
        raise SpecError([SpecProblem("", f"unknown spec format {fmt!r}; use yaml, json or toml")])
    try:
        return gate.decode(text, fmt, root="")
    except ValidationError as exc:
        raise SpecError([SpecProblem(exc.field or "", exc.message)]) from None


def _guess(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "json"
    if re.search(r"^\s*\[[A-Za-z_.]+\]\s*$", text, re.M) or re.search(r"^\s*[A-Za-z_]+\s*=", text, re.M):
        return "toml"
    return "yaml"


class _Checker:
    """Collects problems while walking a raw spec."""

    def __init__(self) -> None:
        self.problems: list[SpecProblem] = []

    def bad(self, field: str, message: str) -> None:
        self.problems.append(SpecProblem(field, message))

    def missing(self, field: str) -> Any:
        """A required field is absent: a problem, and no value (None)."""
        self.bad(field, "is required")
        return None

    def mapping(self, value: Any, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(field, f"must be a mapping, not {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.bad(f"{field}.{key}" if field else str(key), "unknown field")
        return value

    def integer(self, value: Any, field: str, lo: int, hi: int) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(field, f"must be an integer, not {_kind(value)}")
            return None
        if not lo <= value <= hi:
            self.bad(field, f"{value} is outside {lo}..{hi}")
            return None
        return value

    def boolean(self, value: Any, field: str) -> bool | None:
        if not isinstance(value, bool):
            self.bad(field, f"must be true or false, not {_kind(value)}")
            return None
        return value

    def string(self, value: Any, field: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if not isinstance(value, str):
            self.bad(field, f"must be a string, not {_kind(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.bad(field, f"{value!r} {what}")
            return None
        return value

    def argv(self, value: Any, field: str, required: bool) -> list[str] | None:
        if value is None:
            if required:
                self.bad(field, "is required")
            return None
        if isinstance(value, str):
            self.bad(field, "must be a list of strings (argv); commands are argv lists, never shell strings")
            return None
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            self.bad(field, "must be a non-empty list of strings")
            return None
        if not self.few(value, field, MAX_ITEMS[field]):
            return None
        ok = True
        for i, a in enumerate(value):
            ok = self.short(a, f"{field}[{i}]", MAX_CHARS["argument"]) and ok
        return list(value) if ok else None

    def few(self, value: Any, field: str, most: int) -> bool:
        """A list or mapping of at most ``most`` entries."""
        if len(value) > most:
            self.bad(field, f"has {len(value)} entries; at most {most} are allowed")
            return False
        return True

    def short(self, value: str, field: str, most: int) -> bool:
        if len(value) > most:
            self.bad(field, f"is {len(value)} characters long; at most {most} are allowed")
            return False
        return True

    def bounded(self, value: Any, field: str, key: str) -> int | None:
        """An integer within INTEGERS[key]."""
        lo, hi = INTEGERS[key]
        return self.integer(value, field, lo, hi)

    def convert(self, fn: Callable[[Any], int], value: Any, field: str, *, already: str | None = None,
                raw: dict[str, Any] | None = None) -> int | None:
        try:
            return fn(value)
        except ValidationError as exc:
            self.bad(field, exc.message)
            return None


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _duration(ck: _Checker, d: dict[str, Any], key: str, field: str, *, bounds: str | None = None,
              ms_at: str | None = None) -> int | None:
    """Durations may be given as `key: 1s` or, normalized, `key_ms: 1000`, within DURATIONS[bounds] (default
    ``field.key``); ``ms_at`` is the mapping that holds the `key_ms` form when it is not ``field``."""
    name = bounds or f"{field}.{key}"
    lo, hi, default = DURATIONS[name]
    if key + "_ms" in d:
        where = f"{ms_at or field}.{key}_ms"
        v = d[key + "_ms"]
        if not isinstance(v, int) or isinstance(v, bool):
            ck.bad(where, f"must be an integer number of milliseconds, not {_kind(v)}")
            return None
    elif key in d:
        where = name
        v = ck.convert(parse_duration, d[key], where)
        if v is None:
            return None
    else:
        return default
    if v < lo:
        ck.bad(where, f"{_ms(v)} is below the floor of {format_duration(lo)}")
        return None
    if v > hi:
        ck.bad(where, f"{_ms(v)} is above the ceiling of {format_duration(hi)}")
        return None
    return v


def _ms(v: int) -> str:
    return format_duration(v) if v >= 0 else f"{v}ms"


TOP = ("name", "image", "base", "command", "env", "user", "replicas", "resources", "network", "ports", "health",
       "restart", "update", "spread", "constraints", "autoscale", "disruption", "lifecycle", "priority", "service", "capabilities")


def validate_spec(raw: Any, *, name: str | None = None) -> dict[str, Any]:
    """The normalized spec, or SpecError listing every problem with its field path."""
    ck = _Checker()
    if not isinstance(raw, dict):
        raise SpecError([SpecProblem("", f"a job spec must be a mapping, not {_kind(raw)}")])
    ck.mapping(raw, "", TOP)
    out: dict[str, Any] = {}
    out["name"] = ck.string(raw.get("name"), "name", NAME_RE, "must match [a-z0-9][a-z0-9-]{0,62}") \
        if "name" in raw else ck.missing("name")
    if name is not None and out["name"] is not None and out["name"] != name:
        ck.bad("name", f"{out['name']!r} does not match the job {name!r} in the request path")
    out["image"] = ck.string(raw.get("image"), "image", IMAGE_RE, "is not name:tag or sha256:<64 hex>") \
        if "image" in raw else ck.missing("image")
    out["base"] = raw.get("base", "host")
    if out["base"] not in ("host", "scratch"):
        ck.bad("base", f"{out['base']!r} must be host or scratch")
    out["command"] = ck.argv(raw.get("command"), "command", required=True)
    env = raw.get("env", {}) or {}
    if not isinstance(env, dict):
        ck.bad("env", f"must be a mapping of strings, not {_kind(env)}")
        env = {}
    out["env"] = {}
    if not ck.few(env, "env", MAX_ITEMS["env"]):
        env = {}
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            ck.bad(f"env.{str(k)[:64]}", "is not a valid variable name")
        elif not ck.short(k, f"env.{k[:64]}", MAX_CHARS["env.name"]):
            pass
        elif isinstance(v, float) and not math.isfinite(v):
            ck.bad(f"env.{k}", f"{v} is not a finite number")
        elif not isinstance(v, (str, int, float)) or isinstance(v, bool):
            ck.bad(f"env.{k}", f"must be a string, not {_kind(v)}")
        elif ck.short(str(v), f"env.{k}", MAX_CHARS["env.value"]):
            out["env"][k] = str(v)
    user = raw.get("user")
    out["user"] = None if user is None else ck.string(str(user) if isinstance(user, int) else user, "user",
                                                        USER_RE, "must be uid or uid:gid")
    out["replicas"] = ck.bounded(raw.get("replicas", 1), "replicas", "replicas")

    res = ck.mapping(raw.get("resources"), "resources", ("cpu", "memory", "pids"))
    out["resources"] = {
        "cpu": ck.convert(parse_cpu, res.get("cpu", "100m"), "resources.cpu"),
        "memory": ck.convert(parse_size, res.get("memory", "64Mi"), "resources.memory"),
        "pids": ck.bounded(res.get("pids", 256), "resources.pids", "resources.pids"),
    }
    cpu, memory = out["resources"]["cpu"], out["resources"]["memory"]
    if cpu == 0:
        ck.bad("resources.cpu", "must be more than 0")
    elif cpu is not None and cpu > INTEGERS["resources.cpu"][1]:
        ck.bad("resources.cpu", f"{format_cpu(cpu)} is above the ceiling of {format_cpu(INTEGERS['resources.cpu'][1])}")
        out["resources"]["cpu"] = None
    if memory is not None and memory < INTEGERS["resources.memory"][0]:
        ck.bad("resources.memory", "must be at least 4Mi")
    elif memory is not None and memory > INTEGERS["resources.memory"][1]:
        ck.bad("resources.memory", f"{format_size(memory)} is above the ceiling of "
                                   f"{format_size(INTEGERS['resources.memory'][1])}")
        out["resources"]["memory"] = None

    out["network"] = raw.get("network", "host")
    if out["network"] not in ("host", "bridge"):
        ck.bad("network", f"{out['network']!r} must be host or bridge")
    out["ports"] = _ports(ck, raw.get("ports", []))
    out["health"] = _health(ck, raw.get("health"), {p["name"] for p in out["ports"]})
    out["restart"] = _restart(ck, raw.get("restart"))
    out["update"] = _update(ck, raw.get("update"))
    out["spread"] = _spread(ck, raw.get("spread", []))
    out["constraints"] = _constraints(ck, raw.get("constraints", []))
    out["autoscale"] = _autoscale(ck, raw.get("autoscale"), out["replicas"])
    dis = ck.mapping(raw.get("disruption"), "disruption", ("max_unavailable",))
    out["disruption"] = {"max_unavailable": ck.bounded(dis.get("max_unavailable", 1), "disruption.max_unavailable",
                                                       "disruption.max_unavailable")}
    out["lifecycle"] = _lifecycle(ck, raw.get("lifecycle"))
    out["priority"] = ck.bounded(raw.get("priority", 50), "priority", "priority")
    service = raw.get("service", out["name"])
    out["service"] = ck.string(service, "service", NAME_RE, "must match [a-z0-9][a-z0-9-]{0,62}") if service is not None else None
    out["capabilities"] = _capabilities(ck, raw.get("capabilities", []))
    if ck.problems:
        raise SpecError(ck.problems)
    return out


def _capabilities(ck: _Checker, value: Any) -> list[str]:
    """Linux capability names, with or without CAP_, any case: sorted, unique, CAP_-prefixed."""
    if value is None:
        return []
    if not isinstance(value, list):
        ck.bad("capabilities", f"must be a list of capability names, not {_kind(value)}")
        return []
    if len(value) > len(ALLOWED_CAPABILITIES):
        ck.bad("capabilities", f"lists {len(value)} names; at most {len(ALLOWED_CAPABILITIES)} may be asked for")
        return []
    out = set()
    for i, c in enumerate(value):
        if not isinstance(c, str):
            ck.bad(f"capabilities[{i}]", f"must be a string, not {_kind(c)}")
            continue
        cap = c.upper()
        cap = cap if cap.startswith("CAP_") else "CAP_" + cap
        if cap not in ALLOWED_CAPABILITIES:
            ck.bad(f"capabilities[{i}]", f"{c[:40]!r} is not an allowed capability "
                                         f"({', '.join(sorted(x[4:] for x in ALLOWED_CAPABILITIES))})")
            continue
        out.add(cap)
    return sorted(out)


def _ports(ck: _Checker, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        ck.bad("ports", f"must be a list, not {_kind(value)}")
        return []
    if not ck.few(value, "ports", MAX_ITEMS["ports"]):
        return []
    out, seen = [], set()
    for i, p in enumerate(value):
        f = f"ports[{i}]"
        p = ck.mapping(p, f, ("name", "static", "to"))
        pname = ck.string(p.get("name"), f"{f}.name", PORT_NAME_RE, "must match [a-z][a-z0-9_]{0,31}") \
            if "name" in p else ck.missing(f"{f}.name")
        if pname in seen:
            ck.bad(f"{f}.name", f"duplicate port name {pname!r}")
        seen.add(pname)
        static = p.get("static")
        to = p.get("to")
        out.append({"name": pname,
                    "static": None if static is None else ck.bounded(static, f"{f}.static", "ports[].static"),
                    "to": None if to is None else ck.bounded(to, f"{f}.to", "ports[].to")})
    return out


HEALTH = ("type", "port", "path", "command", "interval", "timeout", "failures", "grace",
          "interval_ms", "timeout_ms", "grace_ms")


def _health(ck: _Checker, value: Any, ports: set[str | None]) -> dict[str, Any] | None:
    if value is None:
        return None
    h = ck.mapping(value, "health", HEALTH)
    if not h and not isinstance(value, dict):
        return None
    kind = h.get("type")
    if kind not in ("http", "tcp", "exec"):
        ck.bad("health.type", f"{kind!r} must be http, tcp or exec")
    port = h.get("port")
    if kind in ("http", "tcp"):
        if port is None:
            ck.bad("health.port", f"a {kind} check needs the name of a port")
        elif not isinstance(port, str):
            ck.bad("health.port", f"must be the name of a port, not {_kind(port)}")
        elif port not in ports:
            named = sorted(p for p in ports if isinstance(p, str))
            ck.bad("health.port", f"{port[:40]!r} is not one of the job's ports ({', '.join(named) or 'none'})")
    command = ck.argv(h.get("command"), "health.command", required=kind == "exec") if kind == "exec" or "command" in h else None
    path = h.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        ck.bad("health.path", "must start with /")
    elif not ck.short(path, "health.path", MAX_CHARS["health.path"]):
        path = "/"
    out = {"type": kind, "port": port if kind in ("http", "tcp") else None, "path": path if kind == "http" else "/",
           "command": command or [],
           "interval_ms": _duration(ck, h, "interval", "health"),
           "timeout_ms": _duration(ck, h, "timeout", "health"),
           "failures": ck.bounded(h.get("failures", 3), "health.failures", "health.failures"),
           "grace_ms": _duration(ck, h, "grace", "health")}
    return out


def _restart(ck: _Checker, value: Any) -> dict[str, Any]:
    r = ck.mapping(value, "restart", ("policy", "backoff", "initial_ms", "max_ms", "reset_ms", "reset"))
    policy = r.get("policy", "always")
    if policy not in ("always", "on-failure", "never"):
        ck.bad("restart.policy", f"{policy!r} must be always, on-failure or never")
    b = ck.mapping(r.get("backoff"), "restart.backoff", ("initial", "max"))
    # the normalized form keeps initial_ms/max_ms beside policy; the user form nests them under backoff
    initial = _duration(ck, {**b, **{k: v for k, v in r.items() if k == "initial_ms"}}, "initial", "restart.backoff",
                        ms_at="restart")
    maximum = _duration(ck, {**b, **{k: v for k, v in r.items() if k == "max_ms"}}, "max", "restart.backoff",
                        ms_at="restart")
    reset = _duration(ck, r, "reset", "restart")
    if isinstance(initial, int) and isinstance(maximum, int) and initial > maximum:
        ck.bad("restart.backoff.max", f"{_ms(maximum)} is less than backoff.initial ({_ms(initial)})")
    return {"policy": policy, "initial_ms": initial, "max_ms": maximum, "reset_ms": reset}


UPDATE = ("max_unavailable", "max_surge", "min_healthy", "deadline", "auto_revert", "drain_delay", "canary",
          "auto_promote", "min_healthy_ms", "deadline_ms", "drain_delay_ms")


def _update(ck: _Checker, value: Any) -> dict[str, Any]:
    u = ck.mapping(value, "update", UPDATE)
    out = {"max_unavailable": ck.bounded(u.get("max_unavailable", 1), "update.max_unavailable", "update.max_unavailable"),
           "max_surge": ck.bounded(u.get("max_surge", 0), "update.max_surge", "update.max_surge"),
           "min_healthy_ms": _duration(ck, u, "min_healthy", "update"),
           "deadline_ms": _duration(ck, u, "deadline", "update"),
           "auto_revert": ck.boolean(u.get("auto_revert", True), "update.auto_revert"),
           "drain_delay_ms": _duration(ck, u, "drain_delay", "update"),
           "canary": ck.bounded(u.get("canary", 0), "update.canary", "update.canary"),
           "auto_promote": ck.boolean(u.get("auto_promote", False), "update.auto_promote")}
    if out["max_unavailable"] == 0 and out["max_surge"] == 0:
        ck.bad("update.max_unavailable", "max_unavailable and max_surge cannot both be 0 (a deploy could never progress)")
    return out


def _spread(ck: _Checker, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        ck.bad("spread", f"must be a list, not {_kind(value)}")
        return []
    if not ck.few(value, "spread", MAX_ITEMS["spread"]):
        return []
    out = []
    for i, s in enumerate(value):
        s = ck.mapping(s, f"spread[{i}]", ("level", "mode"))
        level, mode = s.get("level"), s.get("mode", "soft")
        if level not in LEVELS:
            ck.bad(f"spread[{i}].level", f"{level!r} must be region, zone or rack")
        if mode not in ("hard", "soft"):
            ck.bad(f"spread[{i}].mode", f"{mode!r} must be hard or soft")
        out.append({"level": level, "mode": mode})
    return out


def _constraints(ck: _Checker, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        ck.bad("constraints", f"must be a list, not {_kind(value)}")
        return []
    if not ck.few(value, "constraints", MAX_ITEMS["constraints"]):
        return []
    out = []
    for i, c in enumerate(value):
        f = f"constraints[{i}]"
        c = ck.mapping(c, f, ("attr", "op", "value"))
        attr = ck.string(c.get("attr"), f"{f}.attr")
        if attr is not None:
            ck.short(attr, f"{f}.attr", MAX_CHARS["constraints[].attr"])
        op = c.get("op", "==")
        if not isinstance(op, str) or op not in CONSTRAINT_OPS:
            ck.bad(f"{f}.op", f"{str(op)[:20]!r} must be one of {', '.join(CONSTRAINT_OPS)}")
        v = c.get("value")
        if op in ("in", "not_in"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                ck.bad(f"{f}.value", f"{op} needs a list of strings")
            elif ck.few(v, f"{f}.value", MAX_ITEMS["constraints[].value"]):
                for j, x in enumerate(v):
                    ck.short(x, f"{f}.value[{j}]", MAX_CHARS["constraints[].value"])
        elif op in ("exists", "not_exists"):
            v = None
        elif op == "regex":
            if not isinstance(v, str):
                ck.bad(f"{f}.value", f"regex needs a string pattern, not {_kind(v)}")
            else:
                try:
                    compile_regex(v)
                except RegexError as exc:
                    ck.bad(f"{f}.value", str(exc))
        elif v is None:
            ck.bad(f"{f}.value", "is required")
        elif isinstance(v, (list, dict)) or (isinstance(v, float) and not math.isfinite(v)):
            ck.bad(f"{f}.value", f"{op} needs a string, not {_kind(v)}")
        else:
            v = str(v).lower() if isinstance(v, bool) else str(v)
            ck.short(v, f"{f}.value", MAX_CHARS["constraints[].value"])
        out.append({"attr": attr, "op": op, "value": v})
    return out


def _autoscale(ck: _Checker, value: Any, replicas: int | None) -> dict[str, Any] | None:
    if value is None:
        return None
    a = ck.mapping(value, "autoscale", ("min", "max", "metric", "target", "cooldown", "stabilization", "tolerance",
                                        "cooldown_ms", "stabilization_ms"))
    lo = ck.bounded(a.get("min", 1), "autoscale.min", "autoscale.min")
    hi = ck.bounded(a.get("max"), "autoscale.max", "autoscale.max") if "max" in a else ck.missing("autoscale.max")
    if lo is not None and hi is not None and lo > hi:
        ck.bad("autoscale.min", f"min {lo} is more than max {hi}")
    elif replicas is not None and lo is not None and hi is not None and not lo <= replicas <= hi:
        ck.bad("replicas", f"{replicas} is outside the autoscale range {lo}..{hi}")
    metric = a.get("metric", "cpu")
    if not isinstance(metric, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", metric):
        ck.bad("autoscale.metric", "must be cpu or a custom metric name like requests_per_second")
    target: Any = a.get("target")
    if not _real(target) or not 0 < target <= MAX_AUTOSCALE_TARGET:
        ck.bad("autoscale.target", f"must be a positive number up to {MAX_AUTOSCALE_TARGET:g}")
        target = None
    tol: Any = a.get("tolerance", 0.1)
    if not _real(tol) or not 0 <= tol < 1:
        ck.bad("autoscale.tolerance", "must be a number from 0 to 1")
        tol = None
    return {"min": lo, "max": hi, "metric": metric,
            "target": float(target) if target is not None else None,
            "cooldown_ms": _duration(ck, a, "cooldown", "autoscale"),
            "stabilization_ms": _duration(ck, a, "stabilization", "autoscale"),
            "tolerance": float(tol) if tol is not None else None}


def _real(v: Any) -> bool:
    """A finite int or float (not a boolean, NaN or infinity; ints past 2**53 are not exact as floats)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) <= 2**53 if isinstance(v, int) else math.isfinite(v)


def _lifecycle(ck: _Checker, value: Any) -> dict[str, Any]:
    lc = ck.mapping(value, "lifecycle", ("pre_stop",))
    ps = lc.get("pre_stop")
    if ps is None:
        return {"pre_stop": None}
    p = ck.mapping(ps, "lifecycle.pre_stop", ("exec", "timeout", "timeout_ms"))
    return {"pre_stop": {"exec": ck.argv(p.get("exec"), "lifecycle.pre_stop.exec", required=True),
                         "timeout_ms": _duration(ck, p, "timeout", "lifecycle.pre_stop")}}


def runtime_restart(restart: Any) -> tuple[dict[str, Any], list[str]]:
    """Restart settings an agent can act on whatever a stored spec holds, and a note for each value changed.

    Specs stored before every number was validated may hold initial_ms/max_ms/reset_ms as strings, lists or
    negatives: a value that is not an integer takes its default, an integer outside its bounds is clamped."""
    r = restart if isinstance(restart, dict) else {}
    notes: list[str] = [] if isinstance(restart, dict) else [f"restart {_kind(restart)} ignored; using the defaults"]
    out: dict[str, Any] = {"policy": r.get("policy", "always")}
    if out["policy"] not in ("always", "on-failure", "never"):
        notes.append(f"restart.policy {str(out['policy'])[:40]!r} is not always, on-failure or never; using always")
        out["policy"] = "always"
    for key, bounds in (("initial_ms", "restart.backoff.initial"), ("max_ms", "restart.backoff.max"),
                        ("reset_ms", "restart.reset")):
        lo, hi, default = DURATIONS[bounds]
        v = r.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            notes.append(f"restart.{key} {str(v)[:40]!r} is not an integer; using {format_duration(default)}")
            v = default
        elif not lo <= v <= hi:
            clamped = min(max(v, lo), hi)
            notes.append(f"restart.{key} {v} is outside {lo}..{hi}; using {format_duration(clamped)}")
            v = clamped
        out[key] = v
    if out["max_ms"] < out["initial_ms"]:
        notes.append(f"restart.max_ms {out['max_ms']} is less than initial_ms; using {out['initial_ms']}")
        out["max_ms"] = out["initial_ms"]
    return out, notes


def load_spec(text: str | bytes, fmt: str | None = None, *, name: str | None = None) -> dict[str, Any]:
    return validate_spec(parse_spec(text, fmt), name=name)


def denormalize(spec: dict[str, Any]) -> dict[str, Any]:
    """The user-facing form of a normalized spec (what `job inspect` would print).

    A spec stored before every number was validated may hold a duration that is a string, a list or negative;
    such a value is shown as stored instead of failing the whole view."""
    out = {k: v for k, v in spec.items() if v is not None}
    res = spec.get("resources") or {}
    out["resources"] = {"cpu": _shown(format_cpu, res.get("cpu")), "memory": _shown(format_size, res.get("memory")),
                        "pids": res.get("pids")}
    if spec.get("health"):
        h = dict(spec["health"])
        for k in ("interval", "timeout", "grace"):
            h[k] = _shown(format_duration, h.pop(k + "_ms", None))
        out["health"] = {k: v for k, v in h.items() if v not in (None, [])}
    r = spec.get("restart") or {}
    out["restart"] = {"policy": r.get("policy", "always"),
                      "backoff": {"initial": _shown(format_duration, r.get("initial_ms")),
                                  "max": _shown(format_duration, r.get("max_ms"))},
                      "reset": _shown(format_duration, r.get("reset_ms"))}
    u = dict(spec.get("update") or {})
    for k in ("min_healthy", "deadline", "drain_delay"):
        u[k] = _shown(format_duration, u.pop(k + "_ms", None))
    out["update"] = u
    if spec.get("autoscale"):
        a = dict(spec["autoscale"])
        for k in ("cooldown", "stabilization"):
            a[k] = _shown(format_duration, a.pop(k + "_ms", None))
        out["autoscale"] = a
    ps = (spec.get("lifecycle") or {}).get("pre_stop")
    if ps:
        out["lifecycle"] = {"pre_stop": {"exec": ps.get("exec"), "timeout": _shown(format_duration, ps.get("timeout_ms"))}}
    else:
        out.pop("lifecycle", None)
    out["ports"] = [{k: v for k, v in p.items() if v is not None} for p in spec.get("ports") or [] if isinstance(p, dict)]
    out["capabilities"] = list(spec.get("capabilities") or [])
    return out


def _shown(fmt: Callable[[int], str], v: Any) -> Any:
    """``fmt(v)`` for a non-negative integer; anything else (an old, unvalidated value) as stored."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return fmt(v)
    return v
