"""Job-spec parsing and validation: every problem named by its field path."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from raftctl.errors import ValidationError
from raftctl.statemachine.spec import SpecError, denormalize, load_spec, parse_spec, validate_spec
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
    assert s["replicas"] == 1 and s["base"] == "host" and s["network"] == "host"
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
                                     "deadline": durations}),
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
