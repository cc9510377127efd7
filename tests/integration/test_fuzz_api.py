"""Fuzzing the HTTP API of a real 3-replica cluster on loopback.

1. schemathesis generates requests for every operation of the OpenAPI document, valid ones and
   invalid ones (wrong types, missing fields, odd unicode, bad headers), sent to a follower (so writes
   take the forwarding path) with an admin token. Every answer must be a non-5xx (503 aside: it means
   "retry"), conform to the document (status code, content type, schema), and a rejected request
   (4xx) must leave the state index where it was.
2. hypothesis sends raw malformed bodies (bad JSON/CBOR bytes, wrong shapes, huge bodies) and
   odd, path-traversing names to the write endpoints, with the same rules.
3. No replica hangs: every request answers within its timeout and every replica's /healthz answers
   at the end.
4. Hostile encodings (issue 12) in batches: CBOR with every tag 0-300, shared references, deep nesting,
   lone surrogates, huge integers; after each batch every replica answers /healthz within 1 s and
   commits a write within 2 s. Prints the counts of stuck replicas and 5xx; both must be 0.

The run is bounded by a time budget (RAFTCTL_FUZZ_SECONDS, 75 s by default) and prints how many
requests it generated.
"""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from raftctl.devcluster import LocalCluster, Proc
from raftctl.node.openapi import document

from .conftest import wait_until

pytestmark = pytest.mark.integration

BUDGET_S = float(os.environ.get("RAFTCTL_FUZZ_SECONDS", "75"))
# Membership changes would make the cluster dial generated host names: fuzzed by hand below, with
# addresses the handler must reject before it changes anything.
EXCLUDED = {("POST", "/v1/members"), ("DELETE", "/v1/members/{raft}")}
TIMEOUT_S = 20.0  # a request slower than this is a hung replica
# (5xx is checked by hand: 503 is a legitimate "retry elsewhere", e.g. a heartbeat sent to a follower)
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@schemathesis.serializer("application/cbor")
def _cbor(ctx: Any, value: Any) -> bytes:
    """Bodies the document allows as CBOR are sent as CBOR too (schemathesis picks a media type per case)."""
    import cbor2

    return cbor2.dumps(value)


class Fuzz:
    """The cluster under test, the token, and what the run saw."""

    def __init__(self, cluster: LocalCluster, target: Proc, token: str) -> None:
        self.cluster = cluster
        self.target = target
        self.token = token
        self.session = requests.Session()
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.by_media: dict[str, int] = {}
        self.rejected_checked = 0
        self.retried = 0

    def index(self) -> int:
        r = self.session.get(self.target.url + "/v1/status", headers=self.auth(), timeout=TIMEOUT_S)
        r.raise_for_status()
        return int(r.json()["index"])

    def quiet_index(self) -> int:
        """The state index once it has stopped moving (controllers react to earlier, accepted requests)."""
        last, since = self.index(), time.monotonic()
        deadline = since + 15
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.index()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 0.6:
                return now
        return last

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def record(self, status: int) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def assert_rejection_changed_nothing(self, send: Any, what: str) -> None:
        """``send()`` was rejected once already; index before/after must match (retried once on a quiet
        cluster, because the leader's controllers may commit in between on their own)."""
        for attempt in range(2):
            before = self.quiet_index() if attempt else self.index()
            status = send()
            after = self.index()
            if not 400 <= status < 500:
                return  # accepted this time (e.g. it depended on state another request changed)
            if after == before:
                self.rejected_checked += 1
                return
            self.retried += 1
        raise AssertionError(f"rejected request changed the state index {before} -> {after}: {what}")


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(str(tmp_path_factory.mktemp("fuzz")), replicas=3)
    for p in c.servers:
        # no agents here: machines the fuzzer registers must not be declared down mid-run
        p.extra_args = ["--heartbeat-ttl", "1h", "--compact-entries", "500"]
    c.start(timeout=60)
    try:
        leader = wait_until(c.leader, what="a leader")
        target = next(p for p in c.servers if p is not leader)
        admin = c.token()
        assert admin
        r = requests.post(target.url + "/v1/tokens", json={"role": "admin", "name": "fuzz-admin-7f3c9e2b"},
                          headers={"Authorization": f"Bearer {admin}"}, timeout=TIMEOUT_S)
        r.raise_for_status()
        yield Fuzz(c, target, r.json()["token"])
    finally:
        c.stop()


def server_errors(cluster: LocalCluster) -> str:
    """The replicas' logged internal errors (tracebacks), to explain a 500."""
    out = []
    for p in cluster.servers:
        try:
            with open(os.path.join(p.data_dir, "server.log"), errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        at = text.find("internal error on")
        if at >= 0:
            out.append(f"--- {p.id} server.log ---\n{text[at - 60:at + 4000]}")
    return ("\n\n" + "\n".join(out)) if out else ""


def _operations() -> list[Any]:
    schema = schemathesis.openapi.from_dict(document())
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if (op.method.upper(), op.path) not in EXCLUDED]


def _bound_blocking_queries(case: Any) -> None:
    """A blocking query waits up to `wait` (30 s by default): keep the fuzzer's short."""
    if case.query and "index" in case.query:
        case.query["wait"] = "50ms"


def test_schemathesis_requests_never_get_a_5xx_conform_to_the_document_and_rejections_change_nothing(
        fuzz: Fuzz) -> None:
    ops = _operations()
    assert len(ops) >= 35
    started = time.monotonic()
    per_op = max(5, int(os.environ.get("RAFTCTL_FUZZ_EXAMPLES", "40")))
    failures: list[str] = []

    # each operation valid then invalid before the next, so a cut by the time budget still covers both
    for op, mode in [(op, m) for op in ops for m in (schemathesis.GenerationMode.POSITIVE,
                                                      schemathesis.GenerationMode.NEGATIVE)]:
        if time.monotonic() - started > BUDGET_S:
            break

        @settings(max_examples=per_op, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            _bound_blocking_queries(case)
            headers = fuzz.auth()
            case.headers = {**(case.headers or {}), **headers}  # auth is tested apart: always a valid token

            if case.media_type:
                fuzz.by_media[case.media_type] = fuzz.by_media.get(case.media_type, 0) + 1

            def send() -> int:
                resp = case.call(base_url=fuzz.target.url, headers=headers, timeout=TIMEOUT_S,
                                 session=fuzz.session)
                fuzz.record(resp.status_code)
                send.resp = resp  # type: ignore[attr-defined]
                return resp.status_code

            before = fuzz.index()
            status = send()
            resp = send.resp  # type: ignore[attr-defined]
            assert status < 500 or status == 503, f"{case.method} {case.formatted_path}: {status} {resp.text}"
            case.validate_response(resp, checks=CHECKS, headers=headers)
            if 400 <= status < 500:
                if case.method != "HEAD":  # HEAD answers carry no body
                    body = resp.json()
                    assert set(body["error"]) >= {"code", "message", "field"}, body
                if fuzz.index() != before:
                    fuzz.assert_rejection_changed_nothing(send, f"{case.method} {case.formatted_path} "
                                                                f"-> {status} {resp.text[:200]}")
                else:
                    fuzz.rejected_checked += 1

        try:
            run()
        except Unsatisfiable:
            pass  # nothing to make invalid (no parameters, no body)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{mode.value} {op.method.upper()} {op.path}: {type(exc).__name__}: "
                            f"{str(exc)[:1500]}")
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: {fuzz.requests} requests generated over {len(ops)} operations in {elapsed:.0f}s; "
          f"bodies {fuzz.by_media}; status codes {dict(sorted(fuzz.by_status.items()))}; "
          f"{fuzz.rejected_checked} rejections checked "
          f"unchanged ({fuzz.retried} re-checked on a quiet cluster)")
    assert not failures, "\n\n".join(failures) + server_errors(fuzz.cluster)
    assert fuzz.by_status.get(500, 0) == 0
    assert fuzz.requests >= len(ops) * 2


# -- raw, malformed bodies and names --------------------------------------------------------------

WRITE_PATHS = ["/v1/jobs/{name}", "/v1/jobs/{name}/scale", "/v1/jobs/{name}/rollback", "/v1/jobs/{name}/plan",
               "/v1/machines/{name}/drain", "/v1/metrics/{name}", "/v1/tokens", "/v1/agent/register",
               "/v1/agent/heartbeat", "/v1/agent/report", "/v1/agent/stats", "/v1/members",
               "/v1/images/{name}"]
ODD_NAMES = st.one_of(
    st.sampled_from(["..", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a/../b", "%00", "a%00b",
                     "%ff%fe", "\u202e", "con", "web" * 30, "sha256:" + "0" * 64, "\u00e9t\u00e9", "a b",
                     "%F0%9F%92%A9", "~root", ".", "-", "_"]),
    st.text(min_size=1, max_size=80).map(lambda s: urllib.parse.quote(s, safe="")),
)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                       | st.floats(allow_nan=False) | st.text(max_size=30),
                       lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(st.text(max_size=12), children, max_size=5), max_leaves=12)
SHAPED = st.fixed_dictionaries({}, optional={
    "replicas": JSONISH, "version": JSONISH, "reason": JSONISH, "deadline": JSONISH, "metric": JSONISH,
    "value": JSONISH, "role": JSONISH, "name": JSONISH, "machine": JSONISH, "address": JSONISH,
    "resources": JSONISH, "ports": JSONISH, "fault_domain": JSONISH, "labels": JSONISH, "updates": JSONISH,
    "stats": JSONISH, "raft": JSONISH, "digest": JSONISH, "size": JSONISH, "image": JSONISH, "command": JSONISH})
BODIES = st.one_of(
    st.binary(max_size=200).map(lambda b: ("application/json", b)),
    st.binary(max_size=200).map(lambda b: ("application/cbor", b)),
    st.sampled_from([b"{", b"[1,", b"nul", b"\xff\xfe", b'{"a":' * 2000, b"1e999999", b"NaN", b"-Infinity",
                     b'"\\ud800"', b"[" * 5000 + b"]" * 5000, b"{}" * 3]).map(lambda b: ("application/json", b)),
    st.sampled_from([b"\x9f" * 3000, b"\xbf", b"\xd9\xd9\xf7", b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
                     b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd8\x1c\x80", b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00"]
                    ).map(lambda b: ("application/cbor", b)),
    JSONISH.map(lambda v: ("application/json", json.dumps(v).encode())),
    SHAPED.map(lambda v: ("application/json", json.dumps(v).encode())),
    SHAPED.map(lambda v: ("application/cbor", __import__("cbor2").dumps(v))),
    st.integers(min_value=(1 << 20) + 1, max_value=(1 << 20) + 4096).map(
        lambda n: ("application/json", b'{"pad": "' + b"x" * n + b'"}')),
)


def _raw(url: str, method: str, path: str, body: bytes, ctype: str, token: str) -> tuple[int, bytes]:
    host = url.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_malformed_bodies_and_odd_names_never_get_a_5xx_and_change_nothing(fuzz: Fuzz) -> None:
    sent: list[int] = []

    @settings(max_examples=int(os.environ.get("RAFTCTL_FUZZ_RAW_EXAMPLES", "400")), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(template=st.sampled_from(WRITE_PATHS), name=ODD_NAMES, body=BODIES,
           method=st.sampled_from(["POST", "PUT", "POST", "DELETE"]))
    def run(template: str, name: str, body: tuple[str, bytes], method: str) -> None:
        ctype, raw = body
        if template == "/v1/members" and method in ("POST", "PUT"):
            # only addresses the handler must refuse: never let the cluster dial a generated host
            try:
                data = json.loads(raw) if ctype == "application/json" else __import__("cbor2").loads(raw)
            except Exception:
                data = None
            if isinstance(data, dict) and isinstance(data.get("raft"), str) and ":" in data["raft"]:
                return
        # raw UTF-8 in a request line is percent-encoded; slashes, dots and existing escapes go as they are
        path = template.replace("{name}", urllib.parse.quote(name, safe="/%.:~-_"))

        def send() -> int:
            status, payload = _raw(fuzz.target.url, method, path, raw, ctype, fuzz.token)
            fuzz.record(status)
            sent.append(status)
            send.payload = payload  # type: ignore[attr-defined]
            return status

        before = fuzz.index()
        status = send()
        payload = send.payload  # type: ignore[attr-defined]
        assert status < 500 or status == 503, f"{method} {path} {ctype} {raw[:120]!r}: {status} {payload[:300]!r}"
        if 400 <= status < 500:
            err = json.loads(payload)["error"]
            assert set(err) >= {"code", "message", "field"}, err
            if fuzz.index() != before:
                fuzz.assert_rejection_changed_nothing(send, f"{method} {path} {raw[:80]!r} -> {status}")

    try:
        run()
    except Exception as exc:
        raise AssertionError(f"{exc}{server_errors(fuzz.cluster)}") from exc
    print(f"\nraw fuzz: {len(sent)} malformed requests; status codes "
          f"{ {s: sent.count(s) for s in sorted(set(sent))} }")
    assert 500 not in sent


def _members(fuzz: Fuzz) -> list[tuple[str, str | None]]:
    data = requests.get(fuzz.target.url + "/v1/members", headers=fuzz.auth(), timeout=TIMEOUT_S).json()
    return sorted((m["raft"], m.get("api")) for m in data["members"])


def test_membership_changes_with_bad_addresses_are_rejected_and_change_nothing(fuzz: Fuzz) -> None:
    before = _members(fuzz)
    assert len(before) == 3
    for raft in ["", "nohost", ":80", "a:b", "a:123456", "../x:1", "x:1/y", "\u00e9:1", None, 7, ["a:1"]]:
        status, payload = _raw(fuzz.target.url, "POST", "/v1/members", json.dumps({"raft": raft}).encode(),
                               "application/json", fuzz.token)
        assert status == 400, payload
        assert json.loads(payload)["error"]["field"] == "raft"
        path = "/v1/members/" + urllib.parse.quote(str(raft), safe="")
        status, payload = _raw(fuzz.target.url, "DELETE", path, b"", "application/json", fuzz.token)
        assert status in (400, 404, 405), payload
    assert _members(fuzz) == before


def test_no_replica_hangs(fuzz: Fuzz) -> None:
    for p in fuzz.cluster.servers:
        r = requests.get(p.url + "/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["ok"]
    leader = wait_until(fuzz.cluster.leader, timeout=30, what="a leader after fuzzing")
    assert leader is not None
    # and the cluster still commits writes
    r = requests.post(fuzz.target.url + "/v1/tokens", json={"role": "reader", "name": "after-fuzz"},
                      headers=fuzz.auth(), timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text


# -- regressions: 5xx the fuzzer found --------------------------------------------------------------

@pytest.mark.parametrize("method,path,ctype,raw,field", [
    # a duration past float range made parse_duration raise OverflowError (500)
    ("PUT", "/v1/jobs/web", "application/json",
     json.dumps({"name": "web", "image": "web:1", "command": ["x"], "health": {"type": "exec", "command": ["true"],
                                                                              "grace": 1e308}}).encode(),
     "health.grace"),
    ("POST", "/v1/machines/m1/drain", "application/json", b'{"deadline": 1e308}', "deadline"),
    ("POST", "/v1/machines/m1/drain", "application/json", b'{"deadline": "' + b"9" * 400 + b's"}', "deadline"),
    ("PUT", "/v1/jobs/web", "application/json",
     json.dumps({"name": "web", "image": "web:1", "command": ["x"], "resources": {"cpu": "9" * 400}}).encode(),
     "resources.cpu"),
    # an unhashable role made `role not in PERMISSIONS` raise TypeError (500)
    ("POST", "/v1/tokens", "application/json", b'{"role": ["admin"], "name": "x"}', "role"),
    ("POST", "/v1/tokens", "application/json", b'{"role": {"a": 1}, "name": "x"}', "role"),
    # JSON's NaN/Infinity extensions and numbers past float range are not JSON numbers
    ("POST", "/v1/metrics/web", "application/json", b'{"metric": "rps", "value": NaN}', "value"),
    ("POST", "/v1/metrics/web", "application/json", b'{"metric": "rps", "value": 1e999}', "value"),
    # CBOR values JSON cannot hold would poison the state and every JSON answer built from it
    ("POST", "/v1/metrics/web", "application/cbor", __import__("cbor2").dumps({"metric": "rps", "value": float("inf")}),
     "value"),
    ("POST", "/v1/agent/register", "application/cbor",
     __import__("cbor2").dumps({"machine": "m9", "address": "127.0.0.9", "labels": {"a": b"\x00"},
                                "resources": {"cpu": 1000, "memory": 1 << 30, "pids": 100}, "ports": [1, 2]}),
     "labels.a"),
    ("POST", "/v1/agent/register", "application/cbor",
     __import__("cbor2").dumps({"machine": "m9", "labels": __import__("cbor2").CBORTag(4242, "x")}), "labels"),
    ("POST", "/v1/agent/register", "application/cbor", __import__("cbor2").dumps({1: "m9"}), "body"),
])
def test_regression_bad_numbers_and_cbor_values_are_400_naming_the_field(
        fuzz: Fuzz, method: str, path: str, ctype: str, raw: bytes, field: str) -> None:
    def send() -> int:
        return _raw(fuzz.target.url, method, path, raw, ctype, fuzz.token)[0]

    before = fuzz.index()
    status, payload = _raw(fuzz.target.url, method, path, raw, ctype, fuzz.token)
    assert status == 400, payload
    err = json.loads(payload)["error"]
    assert err["field"] == field, err
    if fuzz.index() != before:
        fuzz.assert_rejection_changed_nothing(send, f"{method} {path}")


def test_regression_units_refuse_infinities_nan_and_absurd_figures() -> None:
    from raftctl.errors import ValidationError
    from raftctl.statemachine.units import parse_cpu, parse_duration, parse_size

    for parse in (parse_size, parse_cpu, parse_duration):
        for value in (float("inf"), float("nan"), 1e300, 10**400, "9" * 400):
            with pytest.raises(ValidationError, match="out of range"):
                parse(value, "f")
    assert (parse_size("64Mi"), parse_cpu("250m"), parse_duration("1m30s")) == (64 << 20, 250, 90_000)


# -- issue 12: hostile encodings in batches, with a liveness probe of every replica after each -----------------------

SPEC_DOC = {"name": "x", "image": "web:1", "command": ["serve"], "replicas": 1}
HOSTILE_PATHS = [("POST", "/v1/jobs/x/plan"), ("PUT", "/v1/jobs/x"), ("POST", "/v1/agent/register"),
                 ("POST", "/v1/metrics/x")]


def _cbor_env(value_cbor: bytes) -> bytes:
    """SPEC_DOC with ``env: {"FOO": <value_cbor>}`` spliced in as raw CBOR (for values cbor2 will not encode)."""
    import cbor2

    doc = cbor2.dumps({**SPEC_DOC, "env": {"FOO": 0}})
    assert doc.endswith(b"\x63FOO\x00")
    return doc[:-1] + value_cbor


def _hostile_batches() -> list[tuple[str, list[tuple[str, bytes]]]]:
    import cbor2

    surrogate = "\ud800".encode("utf-8", "surrogatepass")
    tags = [("application/cbor", _cbor_env(cbor2.dumps(cbor2.CBORTag(t, 1)))) for t in range(301)]
    batches = [(f"cbor tags {lo}-{lo + 49}", tags[lo:lo + 50]) for lo in range(0, 301, 50)]
    batches.append(("shared references", [
        ("application/cbor", bytes.fromhex("d81c81d81d00")),
        ("application/cbor", _cbor_env(bytes.fromhex("d81c81d81d00"))),
        ("application/cbor", cbor2.dumps(_doubling(40), value_sharing=True)),
        ("application/cbor", cbor2.dumps({**SPEC_DOC, "command": ["serve"] * 50}, string_referencing=True)),
    ]))
    batches.append(("deep nesting", [
        *[("application/cbor", b"\x81" * d + b"\x00") for d in (65, 400, 1000, 100_000)],
        *[("application/cbor", b"\x9f" * d) for d in (65, 100_000)],
        *[("application/cbor", b"\xa1\x61a" * d + b"\x00") for d in (65, 1000)],
        *[("application/json", b"[" * d + b"]" * d) for d in (65, 1000, 100_000)],
        *[("application/json", b'{"a":' * d + b"1" + b"}" * d) for d in (65, 1000)],
    ]))
    batches.append(("lone surrogates", [
        ("application/json", json.dumps({**SPEC_DOC, "env": {"FOO": "\ud800"}}).encode()),
        ("application/json", json.dumps({**SPEC_DOC, "env": {"\udfff": "x"}}).encode()),
        ("application/json", json.dumps({**SPEC_DOC, "name": "a\udc80b"}).encode()),
        ("application/json", json.dumps({"machine": "\ud83d", "metric": "rps", "value": 1}).encode()),
        ("application/cbor", _cbor_env(b"\x63" + surrogate)),
        ("application/cbor", _cbor_env(b"\xa1\x63" + surrogate + b"\x00")),
        ("application/cbor", _cbor_env(b"\x7f\x63" + surrogate + b"\xff")),
    ]))
    batches.append(("huge integers", [
        *[("application/json", json.dumps({**SPEC_DOC, "replicas": n}).encode())
          for n in (2**63, 2**64, -2**63, -2**64 - 1, 10**400)],
        ("application/json", b'{"metric": "rps", "value": ' + b"9" * 5000 + b"}"),
        *[("application/cbor", cbor2.dumps({**SPEC_DOC, "replicas": n})) for n in (2**63, 2**64 - 1, 2**64, -2**64 - 1,
                                                                                    10**400)],
        ("application/cbor", cbor2.dumps({"metric": "rps", "value": 2**70})),
    ]))
    return batches


def _doubling(levels: int) -> list:
    value: list = [0]
    for _ in range(levels):
        value = [value, value]
    return value


def _probe(fuzz: Fuzz, n: int) -> list[str]:
    """The replicas that are stuck: /healthz not answered within 1 s, or a write through them not committed in 2 s."""
    stuck = []
    for p in fuzz.cluster.servers:
        try:
            r = requests.get(p.url + "/healthz", timeout=1.0)
            ok = r.status_code == 200 and r.json()["ok"]
            if ok:
                r = requests.put(p.url + f"/v1/jobs/probe-{p.id}", json={**SPEC_DOC, "name": f"probe-{p.id}",
                                                                        "replicas": 0, "env": {"N": str(n)}},
                                 headers=fuzz.auth(), timeout=2.0)
                ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        if not ok:
            stuck.append(p.id)
    return stuck


def test_hostile_encodings_in_batches_leave_every_replica_live(fuzz: Fuzz) -> None:
    """CBOR with every tag 0-300, shared references, deep nesting, lone surrogates and huge integers, each sent to
    every hostile path through every replica in turn; after each batch every replica must answer /healthz within
    1 s and commit a write within 2 s. Counts: 0 stuck replicas, 0 5xx."""
    started = time.monotonic()
    sent = server_5xx = stuck_probes = 0
    by_status: dict[int, int] = {}
    stuck_log: list[str] = []
    servers = fuzz.cluster.servers
    for b, (label, bodies) in enumerate(_hostile_batches()):
        for i, (ctype, raw) in enumerate(bodies):
            method, path = HOSTILE_PATHS[i % len(HOSTILE_PATHS)]
            target = servers[(b + i) % len(servers)]
            try:
                status, payload = _raw(target.url, method, path, raw, ctype, fuzz.token)
            except OSError as exc:  # a timeout is a stuck replica, counted by the probe below
                status, payload = 0, str(exc).encode()
            sent += 1
            by_status[status] = by_status.get(status, 0) + 1
            if status >= 500 or status == 0:
                server_5xx += status >= 500
                stuck_log.append(f"{label}: {method} {path} via {target.id}: {status} {payload[:200]!r}")
            elif status != 400:
                stuck_log.append(f"{label}: {method} {path} via {target.id}: {status} (not a 400) {payload[:200]!r}")
        stuck = _probe(fuzz, b)
        stuck_probes += len(stuck)
        if stuck:
            stuck_log.append(f"after {label}: stuck replicas {stuck}")
    elapsed = time.monotonic() - started
    print(f"\nhostile encodings: {sent} requests in {elapsed:.1f}s; status codes {dict(sorted(by_status.items()))}; "
          f"stuck replicas {stuck_probes}; 5xx {server_5xx}")
    assert stuck_probes == 0 and server_5xx == 0, "\n".join(stuck_log) + server_errors(fuzz.cluster)
    assert set(by_status) == {400}, "\n".join(stuck_log)
