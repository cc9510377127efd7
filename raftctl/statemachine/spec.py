"""Job specs: parse YAML, JSON or TOML; validate every field; normalize (docs/state.md).

``validate_spec`` reports every problem at once, each with its field path and
the reason (``resources.memory: "64MB" is not a size; use 64Mi``), and returns
the normalized spec: defaults filled in, durations in ms, sizes in bytes, CPU
in millicores. ``denormalize`` turns a normalized spec back into the user form.
"""
from __future__ import annotations

import json
import re
import tomllib
from typing import Any, Callable, NamedTuple

import yaml

from raftctl.errors import ValidationError
from raftctl.scheduler.pipeline import RegexError, compile_regex
from raftctl.statemachine.units import format_cpu, format_duration, format_size, parse_cpu, parse_duration, parse_size

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
IMAGE_RE = re.compile(r"^(sha256:[0-9a-f]{64}|[a-z0-9][a-z0-9._/-]{0,127}:[A-Za-z0-9._-]{1,64})$")
PORT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
USER_RE = re.compile(r"^\d{1,10}(:\d{1,10})?$")
LEVELS = ("region", "zone", "rack")
CONSTRAINT_OPS = ("==", "!=", "in", "not_in", "exists", "not_exists", "regex")
# The capabilities a job may ask for (Docker's default set); a job gets none unless it lists them.
ALLOWED_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP"})


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
    """The raw mapping of a spec file; a syntax error names the line."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise SpecError([SpecProblem("", "the spec is not UTF-8 text")]) from None
    fmt = (fmt or _guess(text)).lower()
    try:
        if fmt == "json":
            return json.loads(text)
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt in ("yaml", "yml"):
            return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError([SpecProblem("", f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([SpecProblem("", f"TOML syntax error: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SpecError([SpecProblem("", f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}")]) from None
    raise SpecError([SpecProblem("", f"unknown spec format {fmt!r}; use yaml, json or toml")])


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

    def mapping(self, value: Any, field: str, allowed: tuple[str, ...]) -> dict:
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

    def string(self, value: Any, field: str, pattern: re.Pattern | None = None, what: str = "") -> str | None:
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
        return list(value)

    def convert(self, fn: Callable[[Any], int], value: Any, field: str, *, already: str | None = None,
                raw: dict | None = None) -> int | None:
        try:
            return fn(value)
        except ValidationError as exc:
            self.bad(field, exc.message)
            return None


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _duration(ck: _Checker, d: dict, key: str, field: str, default: int) -> int | None:
    """Durations may be given as `key: 1s` or, normalized, `key_ms: 1000`."""
    if key + "_ms" in d:
        return ck.integer(d[key + "_ms"], f"{field}.{key}_ms", 0, 10**10)
    if key in d:
        return ck.convert(parse_duration, d[key], f"{field}.{key}")
    return default


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
        if "name" in raw else (ck.bad("name", "is required") or None)
    if name is not None and out["name"] is not None and out["name"] != name:
        ck.bad("name", f"{out['name']!r} does not match the job {name!r} in the request path")
    out["image"] = ck.string(raw.get("image"), "image", IMAGE_RE, "is not name:tag or sha256:<64 hex>") \
        if "image" in raw else (ck.bad("image", "is required") or None)
    out["base"] = raw.get("base", "host")
    if out["base"] not in ("host", "scratch"):
        ck.bad("base", f"{out['base']!r} must be host or scratch")
    out["command"] = ck.argv(raw.get("command"), "command", required=True)
    env = raw.get("env", {}) or {}
    if not isinstance(env, dict):
        ck.bad("env", f"must be a mapping of strings, not {_kind(env)}")
        env = {}
    out["env"] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            ck.bad(f"env.{k}", "is not a valid variable name")
        elif not isinstance(v, (str, int, float)) or isinstance(v, bool):
            ck.bad(f"env.{k}", f"must be a string, not {_kind(v)}")
        else:
            out["env"][k] = str(v)
    user = raw.get("user")
    out["user"] = None if user is None else ck.string(str(user) if isinstance(user, int) else user, "user",
                                                        USER_RE, "must be uid or uid:gid")
    out["replicas"] = ck.integer(raw.get("replicas", 1), "replicas", 0, 10000)

    res = ck.mapping(raw.get("resources"), "resources", ("cpu", "memory", "pids"))
    out["resources"] = {
        "cpu": ck.convert(parse_cpu, res.get("cpu", "100m"), "resources.cpu"),
        "memory": ck.convert(parse_size, res.get("memory", "64Mi"), "resources.memory"),
        "pids": ck.integer(res.get("pids", 256), "resources.pids", 1, 1 << 22),
    }
    if out["resources"]["cpu"] == 0:
        ck.bad("resources.cpu", "must be more than 0")
    if out["resources"]["memory"] is not None and out["resources"]["memory"] < 4 * 1024 * 1024:
        ck.bad("resources.memory", "must be at least 4Mi")

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
    out["disruption"] = {"max_unavailable": ck.integer(dis.get("max_unavailable", 1), "disruption.max_unavailable", 0, 10000)}
    out["lifecycle"] = _lifecycle(ck, raw.get("lifecycle"))
    out["priority"] = ck.integer(raw.get("priority", 50), "priority", 0, 100)
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


def _ports(ck: _Checker, value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        ck.bad("ports", f"must be a list, not {_kind(value)}")
        return []
    out, seen = [], set()
    for i, p in enumerate(value):
        f = f"ports[{i}]"
        p = ck.mapping(p, f, ("name", "static", "to"))
        pname = ck.string(p.get("name"), f"{f}.name", PORT_NAME_RE, "must match [a-z][a-z0-9_]{0,31}") \
            if "name" in p else (ck.bad(f"{f}.name", "is required") or None)
        if pname in seen:
            ck.bad(f"{f}.name", f"duplicate port name {pname!r}")
        seen.add(pname)
        static = p.get("static")
        to = p.get("to")
        out.append({"name": pname,
                    "static": None if static is None else ck.integer(static, f"{f}.static", 1, 65535),
                    "to": None if to is None else ck.integer(to, f"{f}.to", 1, 65535)})
    return out


HEALTH = ("type", "port", "path", "command", "interval", "timeout", "failures", "grace",
          "interval_ms", "timeout_ms", "grace_ms")


def _health(ck: _Checker, value: Any, ports: set) -> dict | None:
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
        elif port not in ports:
            ck.bad("health.port", f"{port!r} is not one of the job's ports ({', '.join(sorted(ports)) or 'none'})")
    command = ck.argv(h.get("command"), "health.command", required=kind == "exec") if kind == "exec" or "command" in h else None
    path = h.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        ck.bad("health.path", "must start with /")
    out = {"type": kind, "port": port if kind in ("http", "tcp") else None, "path": path if kind == "http" else "/",
           "command": command or [],
           "interval_ms": _duration(ck, h, "interval", "health", 1000),
           "timeout_ms": _duration(ck, h, "timeout", "health", 1000),
           "failures": ck.integer(h.get("failures", 3), "health.failures", 1, 100),
           "grace_ms": _duration(ck, h, "grace", "health", 0)}
    if out["interval_ms"] is not None and out["interval_ms"] < 100:
        ck.bad("health.interval", "must be at least 100ms")
    return out


def _restart(ck: _Checker, value: Any) -> dict:
    r = ck.mapping(value, "restart", ("policy", "backoff", "initial_ms", "max_ms", "reset_ms", "reset"))
    policy = r.get("policy", "always")
    if policy not in ("always", "on-failure", "never"):
        ck.bad("restart.policy", f"{policy!r} must be always, on-failure or never")
    b = ck.mapping(r.get("backoff"), "restart.backoff", ("initial", "max"))
    initial = r["initial_ms"] if "initial_ms" in r else ck.convert(parse_duration, b.get("initial", "100ms"), "restart.backoff.initial")
    maximum = r["max_ms"] if "max_ms" in r else ck.convert(parse_duration, b.get("max", "10s"), "restart.backoff.max")
    reset = _duration(ck, r, "reset", "restart", 60_000)
    if isinstance(initial, int) and isinstance(maximum, int) and initial > maximum:
        ck.bad("restart.backoff.max", "must not be less than backoff.initial")
    return {"policy": policy, "initial_ms": initial, "max_ms": maximum, "reset_ms": reset}


UPDATE = ("max_unavailable", "max_surge", "min_healthy", "deadline", "auto_revert", "drain_delay", "canary",
          "auto_promote", "min_healthy_ms", "deadline_ms", "drain_delay_ms")


def _update(ck: _Checker, value: Any) -> dict:
    u = ck.mapping(value, "update", UPDATE)
    out = {"max_unavailable": ck.integer(u.get("max_unavailable", 1), "update.max_unavailable", 0, 10000),
           "max_surge": ck.integer(u.get("max_surge", 0), "update.max_surge", 0, 10000),
           "min_healthy_ms": _duration(ck, u, "min_healthy", "update", 1000),
           "deadline_ms": _duration(ck, u, "deadline", "update", 300_000),
           "auto_revert": ck.boolean(u.get("auto_revert", True), "update.auto_revert"),
           "drain_delay_ms": _duration(ck, u, "drain_delay", "update", 1000),
           "canary": ck.integer(u.get("canary", 0), "update.canary", 0, 10000),
           "auto_promote": ck.boolean(u.get("auto_promote", False), "update.auto_promote")}
    if out["max_unavailable"] == 0 and out["max_surge"] == 0:
        ck.bad("update.max_unavailable", "max_unavailable and max_surge cannot both be 0 (a deploy could never progress)")
    return out


def _spread(ck: _Checker, value: Any) -> list[dict]:
    if not isinstance(value, list):
        ck.bad("spread", f"must be a list, not {_kind(value)}")
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


def _constraints(ck: _Checker, value: Any) -> list[dict]:
    if not isinstance(value, list):
        ck.bad("constraints", f"must be a list, not {_kind(value)}")
        return []
    out = []
    for i, c in enumerate(value):
        f = f"constraints[{i}]"
        c = ck.mapping(c, f, ("attr", "op", "value"))
        attr = ck.string(c.get("attr"), f"{f}.attr")
        op = c.get("op", "==")
        if op not in CONSTRAINT_OPS:
            ck.bad(f"{f}.op", f"{op!r} must be one of {', '.join(CONSTRAINT_OPS)}")
        v = c.get("value")
        if op in ("in", "not_in"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                ck.bad(f"{f}.value", f"{op} needs a list of strings")
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
        else:
            v = str(v).lower() if isinstance(v, bool) else str(v)
        out.append({"attr": attr, "op": op, "value": v})
    return out


def _autoscale(ck: _Checker, value: Any, replicas: int | None) -> dict | None:
    if value is None:
        return None
    a = ck.mapping(value, "autoscale", ("min", "max", "metric", "target", "cooldown", "stabilization", "tolerance",
                                        "cooldown_ms", "stabilization_ms"))
    lo = ck.integer(a.get("min", 1), "autoscale.min", 0, 10000)
    hi = ck.integer(a.get("max"), "autoscale.max", 1, 10000) if "max" in a else (ck.bad("autoscale.max", "is required") or None)
    if lo is not None and hi is not None and lo > hi:
        ck.bad("autoscale.min", f"min {lo} is more than max {hi}")
    elif replicas is not None and lo is not None and hi is not None and not lo <= replicas <= hi:
        ck.bad("replicas", f"{replicas} is outside the autoscale range {lo}..{hi}")
    metric = a.get("metric", "cpu")
    if not isinstance(metric, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", metric):
        ck.bad("autoscale.metric", "must be cpu or a custom metric name like requests_per_second")
    target = a.get("target")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or target <= 0:
        ck.bad("autoscale.target", "must be a positive number")
    tol = a.get("tolerance", 0.1)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < 1:
        ck.bad("autoscale.tolerance", "must be a number from 0 to 1")
    return {"min": lo, "max": hi, "metric": metric,
            "target": float(target) if isinstance(target, (int, float)) and not isinstance(target, bool) else None,
            "cooldown_ms": _duration(ck, a, "cooldown", "autoscale", 30_000),
            "stabilization_ms": _duration(ck, a, "stabilization", "autoscale", 60_000),
            "tolerance": float(tol) if isinstance(tol, (int, float)) else 0.1}


def _lifecycle(ck: _Checker, value: Any) -> dict:
    lc = ck.mapping(value, "lifecycle", ("pre_stop",))
    ps = lc.get("pre_stop")
    if ps is None:
        return {"pre_stop": None}
    p = ck.mapping(ps, "lifecycle.pre_stop", ("exec", "timeout", "timeout_ms"))
    return {"pre_stop": {"exec": ck.argv(p.get("exec"), "lifecycle.pre_stop.exec", required=True),
                         "timeout_ms": _duration(ck, p, "timeout", "lifecycle.pre_stop", 30_000)}}


def load_spec(text: str | bytes, fmt: str | None = None, *, name: str | None = None) -> dict[str, Any]:
    return validate_spec(parse_spec(text, fmt), name=name)


def denormalize(spec: dict[str, Any]) -> dict[str, Any]:
    """The user-facing form of a normalized spec (what `job inspect` would print)."""
    out = {k: v for k, v in spec.items() if v is not None}
    out["resources"] = {"cpu": format_cpu(spec["resources"]["cpu"]), "memory": format_size(spec["resources"]["memory"]),
                        "pids": spec["resources"]["pids"]}
    if spec.get("health"):
        h = dict(spec["health"])
        for k in ("interval", "timeout", "grace"):
            h[k] = format_duration(h.pop(k + "_ms"))
        out["health"] = {k: v for k, v in h.items() if v not in (None, [])}
    r = spec["restart"]
    out["restart"] = {"policy": r["policy"], "backoff": {"initial": format_duration(r["initial_ms"]),
                                                         "max": format_duration(r["max_ms"])},
                      "reset": format_duration(r["reset_ms"])}
    u = dict(spec["update"])
    for k in ("min_healthy", "deadline", "drain_delay"):
        u[k] = format_duration(u.pop(k + "_ms"))
    out["update"] = u
    if spec.get("autoscale"):
        a = dict(spec["autoscale"])
        for k in ("cooldown", "stabilization"):
            a[k] = format_duration(a.pop(k + "_ms"))
        out["autoscale"] = a
    if spec["lifecycle"]["pre_stop"]:
        ps = spec["lifecycle"]["pre_stop"]
        out["lifecycle"] = {"pre_stop": {"exec": ps["exec"], "timeout": format_duration(ps["timeout_ms"])}}
    else:
        out.pop("lifecycle", None)
    out["ports"] = [{k: v for k, v in p.items() if v is not None} for p in spec["ports"]]
    out["capabilities"] = list(spec.get("capabilities") or [])
    return out
