"""Job-spec parsing and validation: every problem named by its field path."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from raftctl.errors import ValidationError
from raftctl.statemachine.spec import SpecError, denormalize, load_spec, parse_spec, runtime_restart, validate_spec
from raftctl.statemachine.units import parse_cpu, parse_duration, parse_size

BASE = {"name": "web", "image": "web:1", "command": ["python3", "-m", "http.server"]}


@pytest.mark.parametrize("text,expected", [
    ("64Mi", 64 << 20), ("1Gi", 1 << 30), ("512Ki", 512 << 10), ("100M", 100_000_000), ("1500", 1500), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,hint", [("64MB", "use 64Mi"), ("lots", "64Mi"), ("-1", "size"), (True, "size")])
def test_parse_size_rejects(text, hint):
    with pytest.raises(ValidationError) as exc:
        parse_size(text, field="resources.memory")
    assert hint in exc.value.message and exc.value.field == "resources.memory"


@pytest.mark.parametrize("text,expected", [("250m", 250), ("0.5", 500), ("2", 2000), (2, 2000), (0.25, 250)])
def test_parse_cpu(text, expected):
    assert parse_cpu(text) == expected


@pytest.mark.parametrize("text,expected", [("500ms", 500), ("1s", 1000), ("2m", 120_000), ("1h", 3_600_000),
                                           ("1m30s", 90_000), (3, 3000), ("1.5s", 1500), ("10", 10_000)])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1x", "s", "", "1s2", "-1s", None, "1 s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValidationError):
        parse_duration(text)


def test_defaults_are_filled_in():
    s = validate_spec(BASE)
    assert s["replicas"] == 1 and s["base"] == "host" and s["network"] == "bridge"
    assert s["resources"] == {"cpu": 100, "memory": 64 << 20, "pids": 256}
    assert s["update"]["max_unavailable"] == 1 and s["update"]["deadline_ms"] == 300_000
    assert s["restart"] == {"policy": "always", "initial_ms": 100, "max_ms": 10_000, "reset_ms": 60_000}
    assert s["service"] == "web" and s["priority"] == 50 and s["health"] is None


PROBLEMS = [
    ({"resources": {"memory": "64MB"}}, "resources.memory", "use 64Mi"),
    ({"resources": {"cpu": "fast"}}, "resources.cpu", "not a CPU amount"),
    ({"replicas": "many"}, "replicas", "integer"),
    ({"replicas": 10001}, "replicas", "outside"),
    ({"command": "python3 -m http.server"}, "command", "never shell strings"),
    ({"name": "Web_1"}, "name", "must match"),
    ({"image": "../../etc"}, "image", "name:tag"),
    ({"ports": [{"name": "http"}, {"name": "http"}]}, "ports[1].name", "duplicate"),
    ({"ports": [{"name": "http", "static": 70000}]}, "ports[0].static", "outside"),
    ({"health": {"type": "http", "port": "web"}}, "health.port", "not one of the job's ports"),
    ({"health": {"type": "exec"}}, "health.command", "required"),
    ({"health": {"type": "grpc"}}, "health.type", "http, tcp or exec"),
    ({"spread": [{"level": "planet"}]}, "spread[0].level", "region, zone or rack"),
    ({"constraints": [{"attr": "labels.ssd", "op": "~="}]}, "constraints[0].op", "must be one of"),
    ({"autoscale": {"min": 5, "max": 2, "target": 0.5}}, "autoscale.min", "more than max"),
    ({"autoscale": {"min": 2, "max": 5, "target": 0.5}, "replicas": 9}, "replicas", "outside the autoscale range"),
    ({"update": {"max_unavailable": 0, "max_surge": 0}}, "update.max_unavailable", "never progress"),
    ({"restart": {"policy": "sometimes"}}, "restart.policy", "always, on-failure or never"),
    ({"colour": "blue"}, "colour", "unknown field"),
    ({"env": {"1BAD": "x"}}, "env.1BAD", "not a valid variable name"),
    ({"priority": 101}, "priority", "outside"),
    ({"lifecycle": {"pre_stop": {"exec": "sh -c x"}}}, "lifecycle.pre_stop.exec", "argv"),
]


@pytest.mark.parametrize("change,field,reason", PROBLEMS, ids=[p[1] for p in PROBLEMS])
def test_each_problem_names_its_field(change, field, reason):
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, **change})
    fields = {p.field: p.message for p in exc.value.problems}
    assert field in fields, fields
    assert reason in fields[field]


def test_all_problems_are_reported_at_once():
    with pytest.raises(SpecError) as exc:
        validate_spec({"name": "x", "image": "x:1", "command": "ls", "replicas": -1, "resources": {"memory": "1MB"}})
    assert {p.field for p in exc.value.problems} >= {"command", "replicas", "resources.memory"}
    assert exc.value.to_dict()["details"][0]["field"]


def test_name_must_match_the_request_path():
    with pytest.raises(SpecError) as exc:
        validate_spec(BASE, name="api")
    assert exc.value.field == "name"


def test_yaml_json_toml_give_the_same_spec():
    yaml_text = open("examples/web.yaml").read()
    s = load_spec(yaml_text)
    assert load_spec(json.dumps(denormalize(s)), "json") == s
    toml_text = 'name = "web"\nimage = "web:1"\ncommand = ["python3", "-m", "http.server"]\nreplicas = 2\n' \
                '[resources]\nmemory = "128Mi"\ncpu = "250m"\n'
    yaml2 = "name: web\nimage: web:1\ncommand: [python3, -m, http.server]\nreplicas: 2\n" \
            "resources: {memory: 128Mi, cpu: 250m}\n"
    assert load_spec(toml_text) == load_spec(yaml2) == load_spec(toml_text, "toml")


@pytest.mark.parametrize("text,fmt,where", [("name: [", "yaml", "line"), ("{", "json", "line"), ("a = ", "toml", "TOML")])
def test_syntax_errors_say_where(text, fmt, where):
    with pytest.raises(SpecError) as exc:
        parse_spec(text, fmt)
    assert where in exc.value.message


durations = st.sampled_from(["100ms", "1s", "2s", "30s", "1m", "5m"])
specs = st.fixed_dictionaries({
    "name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    "image": st.sampled_from(["web:1", "api:v2", "sha256:" + "a" * 64]),
    "command": st.lists(st.text("abcxyz-_/.", min_size=1, max_size=8), min_size=1, max_size=4),
    "replicas": st.integers(0, 50),
    "resources": st.fixed_dictionaries({"cpu": st.sampled_from(["100m", "250m", "1", "2"]),
                                        "memory": st.sampled_from(["32Mi", "64Mi", "1Gi"]),
                                        "pids": st.integers(1, 1000)}),
    "ports": st.sampled_from([[], [{"name": "http"}], [{"name": "http"}, {"name": "admin", "static": 9000}]]),
    "update": st.fixed_dictionaries({"max_unavailable": st.integers(1, 3), "drain_delay": durations,
                                     "deadline": st.sampled_from(["1s", "2s", "30s", "1m", "5m"])}),
    "spread": st.lists(st.fixed_dictionaries({"level": st.sampled_from(["region", "zone", "rack"]),
                                              "mode": st.sampled_from(["hard", "soft"])}), max_size=2),
    "priority": st.integers(0, 100),
})


@settings(max_examples=100, deadline=None)
@given(specs)
def test_normalize_denormalize_round_trip(raw):
    s = validate_spec(raw)
    assert validate_spec(denormalize(s)) == s
    assert validate_spec(json.loads(json.dumps(denormalize(s)))) == s


# --- capabilities: an allow-list, normalized to sorted unique CAP_ names ---------------------------------------

def test_capabilities_default_to_none():
    assert validate_spec(BASE)["capabilities"] == []
    assert denormalize(validate_spec(BASE))["capabilities"] == []


def test_capabilities_are_normalized_sorted_and_unique():
    s = validate_spec({**BASE, "capabilities": ["net_bind_service", "CAP_CHOWN", "Chown", "cap_kill"]})
    assert s["capabilities"] == ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert denormalize(s)["capabilities"] == ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert validate_spec(denormalize(s)) == s


@pytest.mark.parametrize("caps,field,reason", [
    (["CAP_SYS_ADMIN"], "capabilities[0]", "not an allowed capability"),
    (["chown", "sys_ptrace"], "capabilities[1]", "not an allowed capability"),
    (["CAP_"], "capabilities[0]", "not an allowed capability"),
    (["net_admin"], "capabilities[0]", "not an allowed capability"),
    ([7], "capabilities[0]", "must be a string"),
    ("CAP_CHOWN", "capabilities", "must be a list"),
    (["chown"] * 15, "capabilities", "at most 14"),
])
def test_capabilities_outside_the_allow_list_are_refused(caps, field, reason):
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, "capabilities": caps})
    fields = {p.field: p.message for p in exc.value.problems}
    assert field in fields, fields
    assert reason in fields[field]


# --- regex constraints: validated with RE2 ----------------------------------------------------------------------

def test_a_catastrophic_regex_is_accepted_because_re2_runs_it_in_linear_time():
    s = validate_spec({**BASE, "constraints": [{"attr": "labels.blob", "op": "regex", "value": "(.|.|.|.|.|.|.|.|.)*x"}]})
    assert s["constraints"] == [{"attr": "labels.blob", "op": "regex", "value": "(.|.|.|.|.|.|.|.|.)*x"}]


@pytest.mark.parametrize("pattern,reason", [
    (r"(a)\1", "RE2"),                 # backreference
    (r"(?=a)b", "RE2"),                # look-ahead
    ("a" * 257, "at most 256"),
    ("(a{1000}){1000}", "RE2"),        # a program too large to compile
    (7, "string pattern"),
])
def test_a_regex_re2_cannot_run_is_refused(pattern, reason):
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, "constraints": [{"attr": "labels.x", "op": "regex", "value": pattern}]})
    fields = {p.field: p.message for p in exc.value.problems}
    assert "constraints[0].value" in fields, fields
    assert reason in fields["constraints[0].value"]
    assert exc.value.http_status == 400


# --- every number has a floor and a ceiling; every list and string a length limit (docs/limits.md) ---------------

HEALTH = {"type": "tcp", "port": "p"}
PORTS = [{"name": "p"}]
AUTO = {"min": 1, "max": 3, "target": 0.5}
BOUNDS = [
    # restart backoff: the floor stops a restart storm; the _ms escape hatches are checked the same way
    ({"restart": {"backoff": {"initial": "0s"}}}, "restart.backoff.initial", "0s is below the floor of 100ms"),
    ({"restart": {"backoff": {"initial": "10ms"}}}, "restart.backoff.initial", "below the floor of 100ms"),
    ({"restart": {"backoff": {"initial": "1h"}}}, "restart.backoff.initial", "above the ceiling of 5m"),
    ({"restart": {"backoff": {"max": "50ms", "initial": "100ms"}}}, "restart.backoff.max", "below the floor of 100ms"),
    ({"restart": {"backoff": {"max": "2h"}}}, "restart.backoff.max", "above the ceiling of 1h"),
    ({"restart": {"backoff": {"initial": "5s", "max": "1s"}}}, "restart.backoff.max", "less than backoff.initial"),
    ({"restart": {"backoff": {"initial": [1]}}}, "restart.backoff.initial", "not a duration"),
    ({"restart": {"initial_ms": "5s"}}, "restart.initial_ms", "must be an integer number of milliseconds"),
    ({"restart": {"initial_ms": [100]}}, "restart.initial_ms", "must be an integer"),
    ({"restart": {"initial_ms": -5}}, "restart.initial_ms", "-5ms is below the floor of 100ms"),
    ({"restart": {"initial_ms": 0}}, "restart.initial_ms", "0s is below the floor of 100ms"),
    ({"restart": {"initial_ms": 100.0}}, "restart.initial_ms", "must be an integer"),
    ({"restart": {"initial_ms": True}}, "restart.initial_ms", "must be an integer"),
    ({"restart": {"max_ms": "10s"}}, "restart.max_ms", "must be an integer"),
    ({"restart": {"max_ms": 10**12}}, "restart.max_ms", "above the ceiling of 1h"),
    ({"restart": {"reset_ms": -1}}, "restart.reset_ms", "below the floor of 1s"),
    ({"restart": {"reset": "100ms"}}, "restart.reset", "below the floor of 1s"),
    ({"restart": {"reset": "2d"}}, "restart.reset", "not a duration"),
    # replicas and resources
    ({"replicas": -1}, "replicas", "outside 0..10000"),
    ({"replicas": 2**70}, "replicas", "outside 0..10000"),
    ({"replicas": 1.5}, "replicas", "must be an integer"),
    ({"resources": {"cpu": "0m"}}, "resources.cpu", "more than 0"),
    ({"resources": {"cpu": 2000}}, "resources.cpu", "above the ceiling of 1024"),
    ({"resources": {"memory": "1Mi"}}, "resources.memory", "at least 4Mi"),
    ({"resources": {"memory": "17Ti"}}, "resources.memory", "above the ceiling of 16Ti"),
    ({"resources": {"pids": 0}}, "resources.pids", "outside"),
    ({"resources": {"pids": 1 << 23}}, "resources.pids", "outside"),
    # ports
    ({"ports": [{"name": "p", "static": 0}]}, "ports[0].static", "outside 1..65535"),
    ({"ports": [{"name": "p", "to": 65536}]}, "ports[0].to", "outside 1..65535"),
    ({"ports": [{"name": f"p{i}"} for i in range(33)]}, "ports", "at most 32"),
    # health
    ({"ports": PORTS, "health": {**HEALTH, "interval": "10ms"}}, "health.interval", "below the floor of 100ms"),
    ({"ports": PORTS, "health": {**HEALTH, "interval_ms": 0}}, "health.interval_ms", "below the floor of 100ms"),
    ({"ports": PORTS, "health": {**HEALTH, "interval": "2h"}}, "health.interval", "above the ceiling of 1h"),
    ({"ports": PORTS, "health": {**HEALTH, "timeout": "1ms"}}, "health.timeout", "below the floor of 10ms"),
    ({"ports": PORTS, "health": {**HEALTH, "timeout": "10m"}}, "health.timeout", "above the ceiling of 5m"),
    ({"ports": PORTS, "health": {**HEALTH, "timeout_ms": "1s"}}, "health.timeout_ms", "must be an integer"),
    ({"ports": PORTS, "health": {**HEALTH, "grace": "2h"}}, "health.grace", "above the ceiling of 1h"),
    ({"ports": PORTS, "health": {**HEALTH, "failures": 0}}, "health.failures", "outside 1..100"),
    ({"ports": PORTS, "health": {**HEALTH, "failures": 101}}, "health.failures", "outside 1..100"),
    ({"health": {"type": "exec", "command": ["x"] * 257}}, "health.command", "at most 256"),
    ({"ports": PORTS, "health": {"type": "http", "port": "p", "path": "/" + "a" * 1024}}, "health.path", "at most 1024"),
    # update
    ({"update": {"max_unavailable": 10001}}, "update.max_unavailable", "outside 0..10000"),
    ({"update": {"max_surge": -1}}, "update.max_surge", "outside 0..10000"),
    ({"update": {"canary": 10001}}, "update.canary", "outside 0..10000"),
    ({"update": {"deadline": "100ms"}}, "update.deadline", "below the floor of 1s"),
    ({"update": {"deadline": "25h"}}, "update.deadline", "above the ceiling of 24h"),
    ({"update": {"deadline_ms": "1s"}}, "update.deadline_ms", "must be an integer"),
    ({"update": {"min_healthy": "2h"}}, "update.min_healthy", "above the ceiling of 1h"),
    ({"update": {"min_healthy_ms": -1}}, "update.min_healthy_ms", "below the floor of 0s"),
    ({"update": {"drain_delay": "11m"}}, "update.drain_delay", "above the ceiling of 10m"),
    # autoscale
    ({"autoscale": {**AUTO, "max": 10001}}, "autoscale.max", "outside 1..10000"),
    ({"autoscale": {**AUTO, "min": -1}}, "autoscale.min", "outside 0..10000"),
    ({"autoscale": {**AUTO, "target": float("nan")}}, "autoscale.target", "positive number"),
    ({"autoscale": {**AUTO, "target": float("inf")}}, "autoscale.target", "positive number"),
    ({"autoscale": {**AUTO, "target": 1e10}}, "autoscale.target", "up to 1e+09"),
    ({"autoscale": {**AUTO, "target": "0.5"}}, "autoscale.target", "positive number"),
    ({"autoscale": {**AUTO, "tolerance": float("nan")}}, "autoscale.tolerance", "from 0 to 1"),
    ({"autoscale": {**AUTO, "cooldown": "0s"}}, "autoscale.cooldown", "below the floor of 1s"),
    ({"autoscale": {**AUTO, "cooldown_ms": 10**15}}, "autoscale.cooldown_ms", "above the ceiling of 24h"),
    ({"autoscale": {**AUTO, "stabilization": "48h"}}, "autoscale.stabilization", "above the ceiling of 24h"),
    # disruption, lifecycle, priority
    ({"disruption": {"max_unavailable": -1}}, "disruption.max_unavailable", "outside 0..10000"),
    ({"disruption": {"max_unavailable": "1"}}, "disruption.max_unavailable", "must be an integer"),
    ({"lifecycle": {"pre_stop": {"exec": ["x"], "timeout": "11m"}}}, "lifecycle.pre_stop.timeout",
     "above the ceiling of 10m"),
    ({"lifecycle": {"pre_stop": {"exec": ["x"], "timeout": "0s"}}}, "lifecycle.pre_stop.timeout",
     "below the floor of 100ms"),
    ({"lifecycle": {"pre_stop": {"exec": ["x"], "timeout_ms": [1]}}}, "lifecycle.pre_stop.timeout_ms",
     "must be an integer"),
    ({"lifecycle": {"pre_stop": {"exec": ["x"] * 257}}}, "lifecycle.pre_stop.exec", "at most 256"),
    ({"priority": -1}, "priority", "outside 0..100"),
    # list and string lengths
    ({"command": ["x"] * 257}, "command", "at most 256"),
    ({"command": ["x", "a" * 4097]}, "command[1]", "at most 4096"),
    ({"env": {f"V{i}": "x" for i in range(257)}}, "env", "at most 256"),
    ({"env": {"V": "x" * (64 * 1024 + 1)}}, "env.V", "at most 65536"),
    ({"env": {"V" * 257: "x"}}, "env." + "V" * 64, "at most 256"),
    ({"env": {"V": float("nan")}}, "env.V", "not a finite number"),
    ({"constraints": [{"attr": "id", "op": "exists"}] * 33}, "constraints", "at most 32"),
    ({"constraints": [{"attr": "a" * 257, "op": "exists"}]}, "constraints[0].attr", "at most 256"),
    ({"constraints": [{"attr": "id", "op": "in", "value": ["x"] * 257}]}, "constraints[0].value", "at most 256"),
    ({"constraints": [{"attr": "id", "op": "in", "value": ["x" * 1025]}]}, "constraints[0].value[0]", "at most 1024"),
    ({"constraints": [{"attr": "id", "op": "==", "value": "x" * 1025}]}, "constraints[0].value", "at most 1024"),
    ({"constraints": [{"attr": "id", "op": "==", "value": ["x"]}]}, "constraints[0].value", "needs a string"),
    ({"constraints": [{"attr": "id", "op": ["=="]}]}, "constraints[0].op", "must be one of"),
    ({"spread": [{"level": "zone"}] * 4}, "spread", "at most 3"),
]


@pytest.mark.parametrize("change,field,reason", BOUNDS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BOUNDS)])
def test_every_number_and_list_is_bounded(change, field, reason):
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, **change})
    fields = {p.field: p.message for p in exc.value.problems}
    assert field in fields, fields
    assert reason in fields[field], fields[field]
    assert exc.value.http_status == 400


@pytest.mark.parametrize("change,path,value", [
    ({"restart": {"backoff": {"initial": "100ms", "max": "1h"}, "reset": "24h"}}, ("restart", "max_ms"), 3_600_000),
    ({"restart": {"initial_ms": 250, "max_ms": 250}}, ("restart", "initial_ms"), 250),
    ({"replicas": 10_000}, ("replicas",), 10_000),
    ({"resources": {"cpu": 1024, "memory": "16Ti", "pids": 1 << 22}}, ("resources", "memory"), 16 << 40),
    ({"update": {"min_healthy": "0s", "drain_delay": "0s", "deadline": "1s"}}, ("update", "deadline_ms"), 1000),
    ({"autoscale": {**AUTO, "cooldown": "1s", "stabilization": "0s", "target": 1e9}}, ("autoscale", "target"), 1e9),
    ({"ports": [{"name": f"p{i}"} for i in range(32)]}, ("ports",), [{"name": f"p{i}", "static": None, "to": None, "publish": False}
                                                                      for i in range(32)]),
    ({"command": ["x"] * 256}, ("command",), ["x"] * 256),
])
def test_values_at_the_bounds_are_accepted(change, path, value):
    s = validate_spec({**BASE, **change})
    for key in path:
        s = s[key]
    assert s == value


# --- specs stored before these checks: shown and acted on, never a crash ----------------------------------------

OLD = validate_spec(BASE)


@pytest.mark.parametrize("initial,max_,shown", [
    ("5s", [1, 2], {"initial": "5s", "max": [1, 2]}),
    (-5, 10**15, {"initial": -5, "max": "1000000000000s"}),
    (None, {"x": 1}, {"initial": None, "max": {"x": 1}}),
    (True, 2.5, {"initial": True, "max": 2.5}),
])
def test_job_inspect_shows_an_old_unvalidated_backoff_as_stored(initial, max_, shown):
    old = {**OLD, "restart": {**OLD["restart"], "initial_ms": initial, "max_ms": max_}}
    assert denormalize(old)["restart"]["backoff"] == shown


def test_job_inspect_of_a_spec_stored_before_capabilities_existed():
    old = {k: v for k, v in OLD.items() if k != "capabilities"}
    assert denormalize(old)["capabilities"] == []


@pytest.mark.parametrize("stored,expected", [
    ({"policy": "always", "initial_ms": "5s", "max_ms": [1], "reset_ms": -1},
     {"policy": "always", "initial_ms": 100, "max_ms": 10_000, "reset_ms": 1000}),
    ({"policy": "on-failure", "initial_ms": 0, "max_ms": 10**15, "reset_ms": 60_000},
     {"policy": "on-failure", "initial_ms": 100, "max_ms": 3_600_000, "reset_ms": 60_000}),
    ({"policy": "never", "initial_ms": 5000, "max_ms": 1000, "reset_ms": 60_000},
     {"policy": "never", "initial_ms": 5000, "max_ms": 5000, "reset_ms": 60_000}),
    ({"policy": 7}, {"policy": "always", "initial_ms": 100, "max_ms": 10_000, "reset_ms": 60_000}),
    ("garbage", {"policy": "always", "initial_ms": 100, "max_ms": 10_000, "reset_ms": 60_000}),
])
def test_the_agent_gets_restart_settings_it_can_act_on(stored, expected):
    got, notes = runtime_restart(stored)
    assert got == expected
    assert notes  # each correction is said (the agent logs it)


def test_valid_restart_settings_reach_the_agent_unchanged():
    s = validate_spec({**BASE, "restart": {"policy": "on-failure", "backoff": {"initial": "250ms", "max": "30s"}}})
    assert runtime_restart(s["restart"]) == (s["restart"], [])


# --- the user form as types: the OpenAPI schema and the validator share one definition ------------------------

def test_every_spec_the_validator_accepts_converts_to_the_user_form_struct():
    import msgspec

    from raftctl.statemachine.spec import JobSpecIn

    @settings(max_examples=100, deadline=None)
    @given(specs)
    def check(raw):
        validate_spec(raw)
        msgspec.convert(raw, JobSpecIn)

    check()
    msgspec.convert(denormalize(validate_spec(BASE)), JobSpecIn)


@pytest.mark.parametrize("change,field,reason", [b for b in BOUNDS if isinstance(next(iter(b[0].values())), dict)
                                                 or b[1] in ("replicas", "priority", "command", "spread")],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_the_user_form_struct_refuses_what_its_bounds_refuse(change, field, reason):
    import msgspec

    from raftctl.statemachine.spec import JobSpecIn

    raw = {**BASE, **change}
    try:
        msgspec.convert(raw, JobSpecIn)
    except msgspec.ValidationError:
        return
    # what the types cannot say (units, cross-field checks) is left to validate_spec
    assert any(word in reason for word in ("floor", "ceiling", "less than", "more than 0", "at least", "not a duration",
                                          "must be an integer number", "not a finite", "at most 1024",
                                          "needs a string", "positive number")), (field, reason)


def test_the_bounds_tables_are_the_meta_of_the_user_form_fields():
    import msgspec

    from raftctl.statemachine.spec import DURATIONS, INTEGERS, MAX_ITEMS, JobSpecIn

    _, comps = msgspec.json.schema_components([JobSpecIn])
    top = comps["JobSpecIn"]["properties"]
    assert (top["replicas"]["minimum"], top["replicas"]["maximum"]) == INTEGERS["replicas"]
    assert top["ports"]["anyOf"][0]["maxItems"] == MAX_ITEMS["ports"] and top["command"]["maxItems"] == MAX_ITEMS["command"]
    interval = comps["HealthIn"]["properties"]["interval"]
    assert (interval["x-minimum-ms"], interval["x-maximum-ms"], interval["x-default-ms"]) == DURATIONS["health.interval"]
    assert comps["HealthIn"]["properties"]["interval_ms"]["minimum"] == DURATIONS["health.interval"][0]


@pytest.mark.parametrize("ports,health,reason", [
    ([{"static": 8080}], {"type": "http", "port": "web"}, "not one of the job's ports (none)"),
    ([{"name": "web"}], {"type": "http", "port": ["web"]}, "must be the name of a port, not a list"),
    ([{"name": "web"}], {"type": "tcp", "port": {"a": 1}}, "must be the name of a port, not a mapping"),
])
def test_a_health_port_that_is_not_a_port_name_is_a_problem_not_a_crash(ports, health, reason):
    # these raised TypeError (a 500 through the API): a nameless port in the set being joined, an unhashable port
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, "ports": ports, "health": health})
    fields = {p.field: p.message for p in exc.value.problems}
    assert reason in fields["health.port"], fields


def test_problems_after_a_bad_list_entry_keep_their_index():
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, "ports": ["http", {"name": "a"}, {"name": "a"}],
                       "constraints": [5, {"attr": "x", "op": "in", "value": "y"}]})
    fields = {p.field: p.message for p in exc.value.problems}
    assert "must be a mapping" in fields["ports[0]"] and "duplicate" in fields["ports[2].name"]
    assert "needs a list of strings" in fields["constraints[1].value"], fields


def test_the_normalized_spec_is_the_jobspec_record():
    from raftctl.statemachine.records import JobSpec, to_wire
    from raftctl.statemachine.spec import validate_job_spec

    raw = {**BASE, "ports": [{"name": "http"}], "health": {"type": "http", "port": "http", "interval": "1m30s"}}
    record = validate_job_spec(raw)
    assert isinstance(record, JobSpec) and record.health is not None and record.health.interval == 90_000
    assert to_wire(record) == validate_spec(raw)
    with pytest.raises(SpecError):
        validate_job_spec({**BASE, "replicas": -1})


def test_type_problems_and_cross_field_problems_are_reported_together():
    with pytest.raises(SpecError) as exc:
        validate_spec({**BASE, "resources": {"memory": "64MB", "cpu": 0.0001}, "ports": [{"name": "http"}],
                       "health": {"type": "http", "port": "admin", "interval": "5ms"},
                       "restart": {"backoff": {"initial": "5s", "max": "1s"}, "colour": 1},
                       "update": {"max_unavailable": 0, "max_surge": 0},
                       "autoscale": {"min": 4, "max": 2, "target": "high"}})
    fields = {p.field for p in exc.value.problems}
    assert fields == {"resources.memory", "resources.cpu", "health.port", "health.interval", "restart.backoff.max",
                      "restart.colour", "update.max_unavailable", "autoscale.min", "autoscale.target"}
    assert exc.value.to_dict()["details"] == [{"field": p.field, "message": p.message} for p in exc.value.problems]
