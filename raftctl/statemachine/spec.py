"""Job specs: parse YAML, JSON or TOML; validate every field; normalize (docs/state.md).

``validate_spec`` reports every problem at once, each with its field path and
the reason (``resources.memory: "64MB" is not a size; use 64Mi``), and returns
the normalized spec: defaults filled in, durations in ms, sizes in bytes, CPU
in millicores. ``denormalize`` turns a normalized spec back into the user form.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable, Literal, NamedTuple, cast

import msgspec
import msgspec.inspect as mi
from msgspec import UNSET, UnsetType

from raftctl import gate
from raftctl.errors import ValidationError
from raftctl.scheduler.pipeline import RegexError, compile_regex
from raftctl.statemachine.records import IMAGE_RE, NAME_RE, JobSpec, from_wire
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
                        extra_json_schema={"x-minimum-ms": lo, "x-maximum-ms": hi, "x-default-ms": default},
                        extra={"unit": "duration", "bounds": key})


def _ms_meta(key: str) -> msgspec.Meta:
    lo, hi, _ = DURATIONS[key]
    return msgspec.Meta(ge=lo, le=hi, description=f"the normalized form of `{key.rsplit('.', 1)[1]}`, in milliseconds",
                        extra={"unit": "ms", "bounds": key})


def _items(key: str) -> msgspec.Meta:
    return msgspec.Meta(max_length=MAX_ITEMS[key])


def _chars(key: str, **kw: Any) -> msgspec.Meta:
    return msgspec.Meta(max_length=MAX_CHARS[key], **kw)


# ``extra`` tells the walker in validate_spec what the types alone cannot: a unit to parse, an argv list, a check
# the normalization makes (it depends on other fields), the words for a pattern or a whole message
ARGV = msgspec.Meta(extra={"argv": True})
CUSTOM = msgspec.Meta(extra={"custom": True})
NAME_WORDS = msgspec.Meta(extra={"what": "must match [a-z0-9][a-z0-9-]{0,62}"})


def _words(what: str) -> msgspec.Meta:
    """How a problem with this field's value is told (after the value): the words of a literal's choices in the
    order people read them (msgspec.inspect sorts a Literal's values)."""
    return msgspec.Meta(extra={"what": what})

Argument = Annotated[str, _chars("argument")]
DurationText = str | float
SizeText = Annotated[str | int, msgspec.Meta(description="bytes: `64Mi`, `1Gi`, `100M` or a number of bytes",
                                             extra={"unit": "size"})]
CpuText = Annotated[str | float, msgspec.Meta(description="CPU: `250m` (millicores) or a number of cores (`0.5`)",
                                              extra={"unit": "cpu"})]


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the user-form structs: no field they do not name."""


class ResourcesIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cpu: Annotated[CpuText, msgspec.Meta(extra_json_schema={"x-maximum-millicores": INTEGERS["resources.cpu"][1]})] = "100m"
    memory: Annotated[SizeText, msgspec.Meta(extra_json_schema={"x-minimum-bytes": INTEGERS["resources.memory"][0],
                                                                "x-maximum-bytes": INTEGERS["resources.memory"][1]})] = "64Mi"
    pids: Annotated[int, _range("resources.pids")] = 256


class PortIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=PORT_NAME_RE.pattern, extra={"what": "must match [a-z][a-z0-9_]{0,31}"})]
    static: Annotated[int, _range("ports[].static")] | None = None
    to: Annotated[int, _range("ports[].to")] | None = None
    publish: Annotated[bool, msgspec.Meta(description="network: bridge only: forward the allocated host port on the "
                                                      "machine's address to the container (nftables DNAT)")] = False


class HealthIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A health check: http and tcp name one of the job's ports; exec runs a command."""

    type: Annotated[Literal["http", "tcp", "exec"], _words("must be http, tcp or exec")]
    port: Annotated[str, CUSTOM] | None = None
    path: Annotated[str, _chars("health.path", pattern="^/", extra={"message": "must start with /"})] = "/"
    command: Annotated[list[Argument], _items("health.command"), ARGV] | None = None
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
    policy: Annotated[Literal["always", "on-failure", "never"], _words("must be always, on-failure or never")] = "always"
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
    level: Annotated[Literal["region", "zone", "rack"], _words("must be region, zone or rack")]
    mode: Annotated[Literal["hard", "soft"], _words("must be hard or soft")] = "soft"


class ConstraintIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`in`/`not_in` take a list of strings, `regex` an RE2 pattern, `exists`/`not_exists` no value."""

    attr: Annotated[str, _chars("constraints[].attr")]
    op: Annotated[Literal["==", "!=", "in", "not_in", "exists", "not_exists", "regex"],
                  msgspec.Meta(extra={"what": f"must be one of {', '.join(CONSTRAINT_OPS)}"})] = "=="
    value: Annotated[Annotated[str, _chars("constraints[].value")]
                     | Annotated[list[Annotated[str, _chars("constraints[].value")]], _items("constraints[].value")]
                     | float | bool, CUSTOM] | None = None


class AutoscaleIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min: Annotated[int, _range("autoscale.min")] = 1
    max: Annotated[int, _range("autoscale.max")]
    metric: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$", extra={
        "message": "must be cpu or a custom metric name like requests_per_second"})] = "cpu"
    target: Annotated[float, msgspec.Meta(gt=0, le=MAX_AUTOSCALE_TARGET), CUSTOM]
    cooldown: Annotated[DurationText, _dur("autoscale.cooldown")] | UnsetType = UNSET
    stabilization: Annotated[DurationText, _dur("autoscale.stabilization")] | UnsetType = UNSET
    tolerance: Annotated[float, msgspec.Meta(ge=0, lt=1), CUSTOM] = 0.1
    cooldown_ms: Annotated[int, _ms_meta("autoscale.cooldown")] | UnsetType = UNSET
    stabilization_ms: Annotated[int, _ms_meta("autoscale.stabilization")] | UnsetType = UNSET


class DisruptionIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_unavailable: Annotated[int, _range("disruption.max_unavailable")] = 1


class PreStopIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exec: Annotated[list[Argument], _items("lifecycle.pre_stop.exec"), msgspec.Meta(min_length=1), ARGV]
    timeout: Annotated[DurationText, _dur("lifecycle.pre_stop.timeout")] | UnsetType = UNSET
    timeout_ms: Annotated[int, _ms_meta("lifecycle.pre_stop.timeout")] | UnsetType = UNSET


class LifecycleIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pre_stop: PreStopIn | None = None


class JobSpecIn(_In, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job spec (DESIGN §6, docs/state.md) as a user writes it in YAML, JSON or TOML. Unknown fields are
    rejected; every problem is reported with its field path in error.details."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_RE.pattern, description="must equal the {name} in the path"),
                    NAME_WORDS]
    image: Annotated[str, msgspec.Meta(pattern=IMAGE_RE.pattern,
                                       description="an imported image `name:tag` or `sha256:<64 hex>`",
                                       extra={"what": "is not name:tag or sha256:<64 hex>"})]
    base: Annotated[Literal["host", "scratch"], _words("must be host or scratch")] = "host"
    command: Annotated[list[Argument], _items("command"), msgspec.Meta(min_length=1,
                                                                       description="argv, never a shell string"), ARGV]
    env: Annotated[dict[Annotated[str, _chars("env.name", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
                        Annotated[str, _chars("env.value")] | int | float], _items("env"), CUSTOM] = {}
    user: Annotated[str | int, msgspec.Meta(description="uid or uid:gid"), CUSTOM] | None = None
    replicas: Annotated[int, _range("replicas")] = 1
    resources: ResourcesIn | None = None
    network: Annotated[Literal["host", "bridge"], _words("must be host or bridge")] = "bridge"
    egress: Annotated[Literal["masquerade", "none"], _words("must be masquerade or none"), msgspec.Meta(
        description="network: bridge only: masquerade reaches outside the machine, none reaches only containers")
    ] = "masquerade"
    ports: Annotated[list[PortIn], _items("ports")] | None = []
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
                                                                               "by default"), NAME_WORDS] | None = None
    capabilities: Annotated[list[str], CUSTOM, msgspec.Meta(
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


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _ms(v: int) -> str:
    return format_duration(v) if v >= 0 else f"{v}ms"


def _real(v: Any) -> bool:
    """A finite int or float (not a boolean, NaN or infinity; ints past 2**53 are not exact as floats)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) <= 2**53 if isinstance(v, int) else math.isfinite(v)


def _shown_value(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class _Bad:
    """A value that had a problem (already recorded): later checks that need it are skipped."""

    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()


Check = Callable[["_Walker", Any, str], Any]


class _Walker:
    """Collects the problems of one validation, each with its field path; a bad value becomes BAD."""

    def __init__(self) -> None:
        self.problems: list[SpecProblem] = []

    def bad(self, field: str, message: str) -> Any:
        self.problems.append(SpecProblem(field, message))
        return BAD

    def few(self, v: Any, most: int | None, path: str) -> bool:
        """A list or mapping of at most ``most`` entries."""
        if most is not None and len(v) > most:
            self.bad(path, f"has {len(v)} entries; at most {most} are allowed")
            return False
        return True


# The checks are compiled once from the user-form types (JobSpecIn and its parts, through msgspec.inspect): type,
# bounds, lengths, patterns, literals, required and unknown fields come from the type definitions and their Meta;
# ``extra`` on a Meta names a unit (cpu, size, duration, ms), an argv list, a check left to the normalization
# (it depends on other fields), the words for a pattern or literal, or a whole message.

def _compile(t: Any) -> Check:
    extra: dict[str, Any] = {}
    while isinstance(t, mi.Metadata):
        extra.update(t.extra or {})
        t = t.type
    if isinstance(t, mi.UnionType) and any(isinstance(x, mi.NoneType) for x in t.types):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        inner = _compile_bare(rest[0] if len(rest) == 1 else mi.UnionType(tuple(rest)), extra)
        return lambda ck, v, path: None if v is None else inner(ck, v, path)
    return _compile_bare(t, extra)


def _compile_bare(t: Any, extra: dict[str, Any]) -> Check:
    while isinstance(t, mi.Metadata):
        extra = {**extra, **(t.extra or {})}
        t = t.type
    if "custom" in extra:
        return lambda ck, v, path: v  # checked by the normalization
    if "unit" in extra:
        return _unit_check(extra["unit"], extra.get("bounds", ""))
    message: str | None = extra.get("message")
    if extra.get("argv"):
        return _argv_check(_compile(t.item_type), t.max_length)
    if isinstance(t, mi.StructType):
        return _struct_check(t)
    if isinstance(t, mi.ListType):
        item, most = _compile(t.item_type), t.max_length

        def check_list(ck: _Walker, v: Any, path: str) -> Any:
            if not isinstance(v, list):
                return ck.bad(path, f"must be a list, not {_kind(v)}")
            if not ck.few(v, most, path):
                return BAD
            return [item(ck, x, f"{path}[{i}]") for i, x in enumerate(v)]
        return check_list
    if isinstance(t, mi.BoolType):
        return lambda ck, v, path: v if isinstance(v, bool) else ck.bad(path, f"must be true or false, not {_kind(v)}")
    if isinstance(t, mi.IntType):
        lo, hi = t.ge, t.le

        def check_int(ck: _Walker, v: Any, path: str) -> Any:
            if not isinstance(v, int) or isinstance(v, bool):
                return ck.bad(path, message or f"must be an integer, not {_kind(v)}")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return ck.bad(path, message or f"{v} is outside {lo}..{hi}")
            return v
        return check_int
    if isinstance(t, mi.StrType):
        longest, pattern = t.max_length, re.compile(t.pattern) if t.pattern else None
        what = extra.get("what", "has the wrong form")

        def check_str(ck: _Walker, v: Any, path: str) -> Any:
            if not isinstance(v, str):
                return ck.bad(path, message or f"must be a string, not {_kind(v)}")
            if longest is not None and len(v) > longest:
                return ck.bad(path, f"is {len(v)} characters long; at most {longest} are allowed")
            if pattern is not None and not pattern.search(v):
                return ck.bad(path, message or f"{_shown_value(v)} {what}")
            return v
        return check_str
    if isinstance(t, mi.LiteralType):
        values = frozenset(t.values)
        names = [str(x) for x in t.values]
        words = extra.get("what") or f"must be {', '.join(names[:-1])} or {names[-1]}"

        def check_literal(ck: _Walker, v: Any, path: str) -> Any:
            if isinstance(v, (str, int)) and not isinstance(v, bool) and v in values:
                return v
            return ck.bad(path, f"{repr(str(v)[:20]) if not isinstance(v, str) else _shown_value(v)} {words}")
        return check_literal
    raise TypeError(f"spec.py has no check for {t!r}")  # at import: a type the definitions should not use


def _struct_check(t: Any) -> Check:
    fields = [(f.encode_name, f.required, _compile(f.type)) for f in t.fields]
    known = frozenset(name for name, _, _ in fields)

    def check_struct(ck: _Walker, v: Any, path: str) -> Any:
        if not isinstance(v, dict):
            return ck.bad(path, f"must be a mapping, not {_kind(v)}")
        prefix = f"{path}." if path else ""
        for key in v:
            if key not in known:
                ck.bad(f"{prefix}{key}", "unknown field")
        out: dict[str, Any] = {}
        for name, required, check in fields:
            if name in v:
                out[name] = check(ck, v[name], prefix + name)
            elif required:
                out[name] = ck.bad(prefix + name, "is required")
        return out
    return check_struct


def _argv_check(item: Check, most: int | None) -> Check:
    def check_argv(ck: _Walker, v: Any, path: str) -> Any:
        if isinstance(v, str):
            return ck.bad(path, "must be a list of strings (argv); commands are argv lists, never shell strings")
        if not isinstance(v, list) or not v or not all(isinstance(a, str) for a in v):
            return ck.bad(path, "must be a non-empty list of strings")
        if not ck.few(v, most, path):
            return BAD
        items = [item(ck, a, f"{path}[{i}]") for i, a in enumerate(v)]
        return BAD if any(a is BAD for a in items) else items
    return check_argv


def _unit_check(unit: str, bounds: str) -> Check:
    def check_unit(ck: _Walker, v: Any, path: str) -> Any:
        if unit == "ms":
            if not isinstance(v, int) or isinstance(v, bool):
                return ck.bad(path, f"must be an integer number of milliseconds, not {_kind(v)}")
            return _floor_ceiling(ck, v, bounds, path)
        parse = {"duration": parse_duration, "cpu": parse_cpu, "size": parse_size}[unit]
        try:
            n = parse(v)
        except ValidationError as exc:
            return ck.bad(path, exc.message)
        if unit == "duration":
            return _floor_ceiling(ck, n, bounds, path)
        if unit == "cpu":
            hi = INTEGERS["resources.cpu"][1]
            if n == 0:
                return ck.bad(path, "must be more than 0")
            if n > hi:
                return ck.bad(path, f"{format_cpu(n)} is above the ceiling of {format_cpu(hi)}")
            return n
        lo, hi = INTEGERS["resources.memory"]
        if n < lo:
            return ck.bad(path, f"must be at least {format_size(lo)}")
        if n > hi:
            return ck.bad(path, f"{format_size(n)} is above the ceiling of {format_size(hi)}")
        return n
    return check_unit


def _floor_ceiling(ck: _Walker, ms: int, key: str, path: str) -> Any:
    lo, hi, _ = DURATIONS[key]
    if ms < lo:
        return ck.bad(path, f"{_ms(ms)} is below the floor of {format_duration(lo)}")
    if ms > hi:
        return ck.bad(path, f"{_ms(ms)} is above the ceiling of {format_duration(hi)}")
    return ms


_SPEC_TYPE = cast(mi.StructType, mi.type_info(JobSpecIn))
_CHECK_SPEC = _struct_check(_SPEC_TYPE)
TOP = tuple(f.encode_name for f in _SPEC_TYPE.fields)


def _ok(*values: Any) -> bool:
    """None of ``values`` had a problem."""
    return all(v is not BAD for v in values)


def _duration(d: dict[str, Any], key: str, bounds: str) -> Any:
    """A duration given as `key_ms: 1000` (the normalized form) or `key: 1s`, else its default (DURATIONS)."""
    if key + "_ms" in d:
        return d[key + "_ms"]
    if key in d:
        return d[key]
    return DURATIONS[bounds][2]


def validate_spec(raw: Any, *, name: str | None = None) -> dict[str, Any]:
    """The normalized spec (docs/state.md; :class:`raftctl.statemachine.records.JobSpec` on the wire), or SpecError
    listing every problem with its field path.

    Two passes: the walk over the user-form types (JobSpecIn: types, bounds, lengths, patterns, units, unknown
    fields), then the normalization here: defaults, and the checks that relate fields (a health check's port, an
    autoscale range around replicas, backoff initial <= max, ...). Every problem of both is reported at once."""
    if not isinstance(raw, dict):
        raise SpecError([SpecProblem("", f"a job spec must be a mapping, not {_kind(raw)}")])
    ck = _Walker()
    d = _CHECK_SPEC(ck, raw, "")
    out: dict[str, Any] = {"name": d.get("name"), "image": d.get("image"), "base": d.get("base", "host"),
                           "command": d.get("command")}
    if name is not None and isinstance(out["name"], str) and out["name"] != name:
        ck.bad("name", f"{out['name']!r} does not match the job {name!r} in the request path")
    out["env"] = _env(ck, d.get("env"))
    user = d.get("user")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if user is not None and not isinstance(user, str):
        ck.bad("user", f"must be a string, not {_kind(user)}")
    elif user is not None and not USER_RE.match(user):
        ck.bad("user", f"{user!r} must be uid or uid:gid")
    out["user"] = user
    out["replicas"] = d.get("replicas", 1)
    res = _map(d.get("resources"))
    out["resources"] = {"cpu": res.get("cpu", 100), "memory": res.get("memory", 64 << 20), "pids": res.get("pids", 256)}
    out["network"] = d.get("network", "bridge")
    out["egress"] = d.get("egress", "masquerade")
    out["ports"] = _ports(ck, _items_of(d.get("ports")))
    if out["network"] != "bridge":
        for i, p in _items_of(d.get("ports")):
            if p.get("publish"):
                ck.bad(f"ports[{i}].publish", "only a network: bridge job publishes ports (a host job's port "
                                              "already is the machine's)")
        if "egress" in d and out["egress"] != "masquerade":
            ck.bad("egress", "only a network: bridge job can be cut off (a host job uses the machine's network)")
    out["health"] = _health(ck, d.get("health"), {p["name"] for p in out["ports"] if isinstance(p["name"], str)})
    out["restart"] = _restart(ck, d.get("restart"))
    out["update"] = _update(ck, d.get("update"))
    out["spread"] = [{"level": s.get("level"), "mode": s.get("mode", "soft")} for _, s in _items_of(d.get("spread"))]
    out["constraints"] = _constraints(ck, _items_of(d.get("constraints")))
    out["autoscale"] = _autoscale(ck, d.get("autoscale"), out["replicas"])
    out["disruption"] = {"max_unavailable": _map(d.get("disruption")).get("max_unavailable", 1)}
    pre_stop = _map(d.get("lifecycle")).get("pre_stop")
    out["lifecycle"] = {"pre_stop": None if pre_stop is None or pre_stop is BAD else {
        "exec": pre_stop.get("exec"),
        "timeout_ms": _duration(pre_stop, "timeout", "lifecycle.pre_stop.timeout")}}
    out["priority"] = d.get("priority", 50)
    out["service"] = d["service"] if "service" in d else out["name"]
    out["capabilities"] = _capabilities(ck, d.get("capabilities"))
    if ck.problems:
        raise SpecError(ck.problems)
    return out


def validate_job_spec(raw: Any, *, name: str | None = None) -> JobSpec:
    """The normalized spec as its record (durations in Millis, tuples for lists), or SpecError."""
    return from_wire(JobSpec, validate_spec(raw, name=name))


def _map(value: Any) -> dict[str, Any]:
    """A checked mapping, or {} for one that is absent, null or had a problem."""
    return value if isinstance(value, dict) else {}


def _items_of(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) of the entries of a list of mappings that had no problem of their own."""
    return [(i, x) for i, x in enumerate(value) if isinstance(x, dict)] if isinstance(value, list) else []


def _env(ck: _Walker, env: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not env:  # absent, null, or any empty value (as before: `env: []` meant no variables)
        return out
    if not isinstance(env, dict):
        ck.bad("env", f"must be a mapping of strings, not {_kind(env)}")
        return out
    if not ck.few(env, MAX_ITEMS["env"], "env"):
        return out
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            ck.bad(f"env.{str(k)[:64]}", "is not a valid variable name")
        elif len(k) > MAX_CHARS["env.name"]:
            ck.bad(f"env.{k[:64]}", f"is {len(k)} characters long; at most {MAX_CHARS['env.name']} are allowed")
        elif isinstance(v, float) and not math.isfinite(v):
            ck.bad(f"env.{k}", f"{v} is not a finite number")
        elif not isinstance(v, (str, int, float)) or isinstance(v, bool):
            ck.bad(f"env.{k}", f"must be a string, not {_kind(v)}")
        elif len(str(v)) > MAX_CHARS["env.value"]:
            ck.bad(f"env.{k}", f"is {len(str(v))} characters long; at most {MAX_CHARS['env.value']} are allowed")
        else:
            out[k] = str(v)
    return out


def _capabilities(ck: _Walker, value: Any) -> list[str]:
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


def _ports(ck: _Walker, ports: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for i, p in ports:
        pname = p.get("name")
        if isinstance(pname, str) and pname in seen:
            ck.bad(f"ports[{i}].name", f"duplicate port name {pname!r}")
        seen.add(pname if isinstance(pname, str) else None)
        out.append({"name": pname, "static": p.get("static"), "to": p.get("to"), "publish": p.get("publish", False)})
    return out


def _health(ck: _Walker, h: Any, ports: set[str]) -> dict[str, Any] | None:
    if h is None or h is BAD:
        return None
    kind = h.get("type")
    port = h.get("port")
    if kind in ("http", "tcp"):
        if port is None:
            ck.bad("health.port", f"a {kind} check needs the name of a port")
        elif not isinstance(port, str):
            ck.bad("health.port", f"must be the name of a port, not {_kind(port)}")
        elif port not in ports:
            ck.bad("health.port", f"{port[:40]!r} is not one of the job's ports ({', '.join(sorted(ports)) or 'none'})")
    command = h.get("command")
    if kind == "exec" and command is None:
        ck.bad("health.command", "is required")
    path = h.get("path", "/")
    return {"type": kind, "port": port if kind in ("http", "tcp") else None,
            "path": path if kind == "http" and isinstance(path, str) else "/",
            "command": command or [],
            "interval_ms": _duration(h, "interval", "health.interval"),
            "timeout_ms": _duration(h, "timeout", "health.timeout"),
            "failures": h.get("failures", 3),
            "grace_ms": _duration(h, "grace", "health.grace")}


def _restart(ck: _Walker, r: Any) -> dict[str, Any]:
    r = r if isinstance(r, dict) else {}
    b = r.get("backoff") if isinstance(r.get("backoff"), dict) else {}
    # the normalized form keeps initial_ms/max_ms beside policy; the user form nests them under backoff
    initial = r["initial_ms"] if "initial_ms" in r else _duration(b, "initial", "restart.backoff.initial")
    maximum = r["max_ms"] if "max_ms" in r else _duration(b, "max", "restart.backoff.max")
    if isinstance(initial, int) and isinstance(maximum, int) and initial > maximum:
        ck.bad("restart.backoff.max", f"{_ms(maximum)} is less than backoff.initial ({_ms(initial)})")
    return {"policy": r.get("policy", "always"), "initial_ms": initial, "max_ms": maximum,
            "reset_ms": _duration(r, "reset", "restart.reset")}


def _update(ck: _Walker, u: Any) -> dict[str, Any]:
    u = u if isinstance(u, dict) else {}
    out = {"max_unavailable": u.get("max_unavailable", 1), "max_surge": u.get("max_surge", 0),
           "min_healthy_ms": _duration(u, "min_healthy", "update.min_healthy"),
           "deadline_ms": _duration(u, "deadline", "update.deadline"),
           "auto_revert": u.get("auto_revert", True),
           "drain_delay_ms": _duration(u, "drain_delay", "update.drain_delay"),
           "canary": u.get("canary", 0), "auto_promote": u.get("auto_promote", False)}
    if out["max_unavailable"] == 0 and out["max_surge"] == 0:
        ck.bad("update.max_unavailable", "max_unavailable and max_surge cannot both be 0 (a deploy could never progress)")
    return out


def _constraints(ck: _Walker, constraints: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for i, c in constraints:
        f = f"constraints[{i}]"
        op, v = c.get("op", "=="), c.get("value")
        if op in ("in", "not_in"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                ck.bad(f"{f}.value", f"{op} needs a list of strings")
            elif ck.few(v, MAX_ITEMS["constraints[].value"], f"{f}.value"):
                for j, x in enumerate(v):
                    _short(ck, x, f"{f}.value[{j}]", MAX_CHARS["constraints[].value"])
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
        elif op is BAD:
            pass
        elif v is None:
            ck.bad(f"{f}.value", "is required")
        elif isinstance(v, (list, dict)) or (isinstance(v, float) and not math.isfinite(v)):
            ck.bad(f"{f}.value", f"{op} needs a string, not {_kind(v)}")
        else:
            v = str(v).lower() if isinstance(v, bool) else str(v)
            _short(ck, v, f"{f}.value", MAX_CHARS["constraints[].value"])
        out.append({"attr": c.get("attr"), "op": op, "value": v})
    return out


def _short(ck: _Walker, value: str, field: str, most: int) -> None:
    if len(value) > most:
        ck.bad(field, f"is {len(value)} characters long; at most {most} are allowed")


def _autoscale(ck: _Walker, a: Any, replicas: Any) -> dict[str, Any] | None:
    if a is None or a is BAD:
        return None
    lo, hi = a.get("min", 1), a.get("max")
    if _ok(lo, hi) and hi is not None and lo > hi:
        ck.bad("autoscale.min", f"min {lo} is more than max {hi}")
    elif _ok(lo, hi, replicas) and hi is not None and not lo <= replicas <= hi:
        ck.bad("replicas", f"{replicas} is outside the autoscale range {lo}..{hi}")
    target: Any = a.get("target")
    if "target" in a and target is not BAD and (not _real(target) or not 0 < target <= MAX_AUTOSCALE_TARGET):
        ck.bad("autoscale.target", f"must be a positive number up to {MAX_AUTOSCALE_TARGET:g}")
        target = BAD
    tol: Any = a.get("tolerance", 0.1)
    if not _real(tol) or not 0 <= tol < 1:
        ck.bad("autoscale.tolerance", "must be a number from 0 to 1")
        tol = BAD
    return {"min": lo, "max": hi, "metric": a.get("metric", "cpu"),
            "target": float(target) if _real(target) else target,
            "cooldown_ms": _duration(a, "cooldown", "autoscale.cooldown"),
            "stabilization_ms": _duration(a, "stabilization", "autoscale.stabilization"),
            "tolerance": float(tol) if _real(tol) else tol}


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
