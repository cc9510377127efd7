"""The one gate for untrusted bytes (raftctl/gate.py, issue 12): every hostile document is a ValidationError
naming its field (or ``body``), decided without building what the document describes; valid ones pass."""
from __future__ import annotations

import json
import time

import cbor2
import pytest

from raftctl import gate
from raftctl.errors import ValidationError
from tests.hostile import SELF_REFERENCE, reference_bomb


def cbor_tagged(tag: int) -> bytes:
    """``{"env": {"FOO": tag(...)}}`` for any tag, its content a small integer."""
    return b"\xa1\x63env\xa1\x63FOO" + cbor2.dumps(cbor2.CBORTag(tag, 1))


def cbor_text(raw: bytes) -> bytes:
    """A CBOR text string header around bytes that may not be UTF-8 (cbor2 would refuse to encode them)."""
    assert len(raw) < 24
    return bytes([0x60 | len(raw)]) + raw


LONE_SURROGATE_UTF8 = "\ud800".encode("utf-8", "surrogatepass")  # ed a0 80

HOSTILE = [
    # (id, format, document, field the error must name)
    ("cbor-self-reference-6-bytes", "cbor", SELF_REFERENCE, "body"),
    ("cbor-reference-bomb", "cbor", reference_bomb(), "body"),
    ("cbor-reference-bomb-60-levels", "cbor", reference_bomb(60), "body"),  # 2**60 leaves in 401 bytes
    ("cbor-stringref-namespace", "cbor", cbor2.dumps(["abc", "abc", "abc"], string_referencing=True), "body"),
    ("cbor-depth-1000", "cbor", b"\x81" * 1000 + b"\x00", "[0]" * 64),
    ("cbor-indefinite-depth-1000", "cbor", b"\x9f" * 1000, "[0]" * 64),
    ("cbor-list-10**6", "cbor", b"\x9a" + (10**6).to_bytes(4, "big") + b"\x00" * 64, "body"),
    ("cbor-list-10**6-filled", "cbor", cbor2.dumps([0] * 10**6), "body"),
    ("cbor-surrogate-value", "cbor", b"\xa1\x63env\xa1\x63FOO" + cbor_text(LONE_SURROGATE_UTF8), "env.FOO"),
    ("cbor-surrogate-key", "cbor", b"\xa1\x63env\xa1" + cbor_text(LONE_SURROGATE_UTF8) + b"\x61x", "env"),
    ("cbor-2**64", "cbor", cbor2.dumps({"replicas": 2**64}), "replicas"),
    ("cbor-2**64-1", "cbor", cbor2.dumps({"replicas": 2**64 - 1}), "replicas"),
    ("cbor--2**64-1", "cbor", cbor2.dumps({"replicas": -2**64 - 1}), "replicas"),
    ("cbor-2**63", "cbor", cbor2.dumps({"replicas": 2**63}), "replicas"),
    ("cbor-nan", "cbor", cbor2.dumps({"value": float("nan")}), "value"),
    ("cbor-infinity-half-float", "cbor", b"\xa1\x65value\xf9\x7c\x00", "value"),
    ("cbor-undefined", "cbor", b"\xa1\x65value\xf7", "value"),
    ("cbor-simple-value", "cbor", b"\xa1\x65value\xf8\x20", "value"),
    ("cbor-bytes", "cbor", cbor2.dumps({"labels": {"a": b"\x00"}}), "labels.a"),
    ("cbor-integer-key", "cbor", cbor2.dumps({1: "m9"}), "body"),
    ("cbor-duplicate-key", "cbor", b"\xa2\x61a\x01\x61a\x02", "body"),
    ("cbor-trailing-bytes", "cbor", b"\xa0\x00", "body"),
    ("cbor-truncated", "cbor", b"\x82\x01", "body"),
    ("cbor-huge-string-header", "cbor", b"\x7b" + b"\xff" * 8, "body"),
    ("cbor-long-string", "cbor", cbor2.dumps({"env": {"A": "x" * (gate.MAX_STRING + 1)}}), "env.A"),
    ("json-depth-1000", "json", b"[" * 1000 + b"]" * 1000, "body"),
    ("json-depth-65", "json", b"[" * 65 + b"]" * 65, "[0]" * 64),
    ("json-list-10**6", "json", json.dumps([0] * 10**6).encode(), "body"),
    ("json-list-over-max-items", "json", json.dumps({"stats": [0] * (gate.MAX_ITEMS + 1)}).encode(), "stats"),
    ("json-too-many-nodes", "json", json.dumps({"a": [[0] * 9000] * 12}).encode(), "body"),
    ("json-surrogate-value", "json", b'{"env": {"FOO": "\\ud800"}}', "env.FOO"),
    ("json-surrogate-low", "json", b'{"env": {"FOO": "a\\udfffb"}}', "env.FOO"),
    ("json-surrogate-key", "json", b'{"env": {"\\ud800": "x"}}', "env"),
    ("json-nan", "json", b'{"value": NaN}', "value"),
    ("json-infinity", "json", b'{"value": -Infinity}', "value"),
    ("json-1e999", "json", b'{"value": 1e999}', "value"),
    ("json-2**64", "json", json.dumps({"replicas": 2**64}).encode(), "replicas"),
    ("json--2**64-1", "json", json.dumps({"replicas": -2**64 - 1}).encode(), "replicas"),
    ("json-5000-digits", "json", b'{"replicas": ' + b"9" * 5000 + b"}", "replicas"),
    ("json-duplicate-key", "json", b'{"a": 1, "a": 2}', "body"),
    ("json-not-utf8", "json", b'{"a": "\xff"}', "body"),
    ("json-syntax", "json", b'{"a": ', "body"),
    ("yaml-alias-bomb", "yaml", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n", "body"),
    ("yaml-recursive-alias", "yaml", "a: &a [*a]\n", "body"),
    ("yaml-python-object", "yaml", "a: !!python/object/apply:os.system ['true']\n", "body"),
    ("yaml-python-name", "yaml", "a: !!python/name:os.system\n", "body"),
    ("yaml-custom-tag", "yaml", "a: !secret x\n", "body"),
    ("yaml-binary", "yaml", "a: !!binary aGVsbG8=\n", "body"),
    ("yaml-set", "yaml", "a: !!set {x, y}\n", "body"),
    ("yaml-depth-1000", "yaml", "[" * 1000 + "]" * 1000, "body"),
    ("yaml-nan", "yaml", "resources: {cpu: .nan}\n", "resources.cpu"),
    ("yaml-2**64", "yaml", f"replicas: {2**64}\n", "replicas"),
    ("yaml-integer-key", "yaml", "labels: {1: x}\n", "labels"),
    ("yaml-two-documents", "yaml", "a: 1\n---\nb: 2\n", "body"),
    ("yaml-duplicate-key", "yaml", "env:\n  A: x\n  B: y\n  A: z\n", "body"),
    ("toml-datetime", "toml", "name = 1979-05-27T07:32:00Z\n", "name"),
    ("toml-inf", "toml", "[resources]\ncpu = inf\n", "resources.cpu"),
    ("toml-2**64", "toml", f"replicas = {2**64}\n", "replicas"),
    ("toml-depth-1000", "toml", "a = " + "[" * 1000 + "]" * 1000 + "\n", "body"),
    ("toml-syntax", "toml", "a = \n", "body"),
    ("any-over-max-bytes", "json", b'{"pad": "' + b"x" * gate.MAX_BYTES + b'"}', "body"),
]

# every CBOR tag 0..300 (semantic ones included: 0/1 dates, 2/3 bignums, 25/256 string references, 28/29 shared
# references, 258 sets...), each where a job's env value would be
HOSTILE += [(f"cbor-tag-{tag}", "cbor", cbor_tagged(tag), "env.FOO") for tag in range(301)]

DECODE_TIMES: dict[str, float] = {}


@pytest.mark.parametrize("fmt,doc,field", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_documents_are_refused_naming_the_field(fmt: str, doc: bytes | str, field: str,
                                                       request: pytest.FixtureRequest) -> None:
    started = time.perf_counter()
    with pytest.raises(ValidationError) as exc:
        gate.decode(doc, fmt)
    DECODE_TIMES[request.node.callspec.id] = time.perf_counter() - started
    assert exc.value.field == field, exc.value.message
    assert exc.value.code == "invalid" and exc.value.http_status == 400
    assert exc.value.message


def test_report_slowest_refusals() -> None:
    """Not an assertion on time (tests never time): prints what the refusals above measured."""
    if DECODE_TIMES:
        slow = sorted(DECODE_TIMES.items(), key=lambda kv: -kv[1])[:5]
        print("\nslowest refusals: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in slow))


VALID = [
    ("json", b'{"name": "web", "replicas": 3, "env": {"A": "b\\u00e9\\ud83d\\ude00"}, "cpu": 0.25, "x": null,'
             b' "ok": true, "n": -9223372036854775807}',
     {"name": "web", "replicas": 3, "env": {"A": "b\u00e9\U0001F600"}, "cpu": 0.25, "x": None, "ok": True,
      "n": -(2**63 - 1)}),
    ("cbor", cbor2.dumps({"name": "web", "ports": [{"name": "http", "port": 8080}], "big": 2**63 - 1, "f": 1.5}),
     {"name": "web", "ports": [{"name": "http", "port": 8080}], "big": 2**63 - 1, "f": 1.5}),
    ("cbor", b"\xbf\x61a\x9f\x01\x02\xff\x61b\x7f\x61x\x61y\xff\xff", {"a": [1, 2], "b": "xy"}),  # indefinite lengths
    ("cbor", cbor2.dumps({"half": 1.0}, canonical=True), {"half": 1.0}),  # a half-precision float
    ("cbor", cbor2.dumps({"e": [], "m": {}, "s": ""}), {"e": [], "m": {}, "s": ""}),
    ("yaml", "name: web\nlabels: {built: 2024-01-01}\ncommand: [python3, -m, http.server]\nenv: {A: !!str 3}\n",
     {"name": "web", "labels": {"built": "2024-01-01"}, "command": ["python3", "-m", "http.server"],
      "env": {"A": "3"}}),
    ("toml", 'name = "web"\nreplicas = 2\n[resources]\nmemory = "128Mi"\n',
     {"name": "web", "replicas": 2, "resources": {"memory": "128Mi"}}),
    ("json", json.dumps({"stats": [{"job": "j", "cpu": 0.5}] * 5000}).encode(),
     {"stats": [{"job": "j", "cpu": 0.5}] * 5000}),
    ("json", b"[" * 64 + b"]" * 64, None),
]


@pytest.mark.parametrize("fmt,doc,expected", VALID, ids=[f"{v[0]}-{i}" for i, v in enumerate(VALID)])
def test_valid_documents_pass_unchanged(fmt: str, doc: bytes | str, expected: object) -> None:
    value = gate.decode(doc, fmt)
    if expected is not None:
        assert value == expected


def test_decoded_values_share_nothing() -> None:
    """Two equal subtrees are two objects: mutating one never changes the other."""
    value = gate.decode(cbor2.dumps({"a": [1], "b": [1]}), "cbor")
    value["a"].append(2)
    assert value["b"] == [1]


def test_the_walk_refuses_shared_and_cyclic_values_built_by_any_decoder() -> None:
    shared = [1]
    with pytest.raises(ValidationError, match="referenced twice") as exc:
        gate.check({"a": shared, "b": shared})
    assert exc.value.field in ("a", "b")
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValidationError):
        gate.check({"x": cyclic})


def test_body_uses_cbor_only_for_its_content_type() -> None:
    assert gate.decode_body(b'{"a": 1}', "application/json") == {"a": 1}
    assert gate.decode_body(cbor2.dumps({"a": 1}), "application/cbor") == {"a": 1}
    with pytest.raises(ValidationError) as exc:
        gate.decode_body(b"", "application/json")
    assert exc.value.field == "body"
    with pytest.raises(ValidationError, match="at most 100 bytes"):
        gate.decode_body(b'{"a": "' + b"x" * 100 + b'"}', "application/json", max_bytes=100)


@pytest.mark.parametrize("text,fmt,field", [
    ("name: web\nenv: &e {A: b}\nlabels: *e\n", "yaml", ""),
    ("name: web\nx: !!python/object/apply:os.system [true]\n", "yaml", ""),
    ('{"name": "web", "env": {"FOO": "\\ud800"}}', "json", "env.FOO"),
    ('name = "web"\n[env]\nFOO = nan\n', "toml", "env.FOO"),
    ("name: web\nreplicas: 18446744073709551616\n", "yaml", "replicas"),
    ("\n" * (gate.MAX_BYTES + 1), None, ""),
])
def test_spec_files_pass_the_gate(text: str, fmt: str | None, field: str) -> None:
    from raftctl.statemachine.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as exc:
        parse_spec(text, fmt)
    assert exc.value.field in (field, None), exc.value.message
    assert exc.value.problems[0].field == field


async def test_the_agent_treats_a_hostile_answer_as_a_replica_not_answering() -> None:
    """raftctl/agent/control.py decodes the control plane's answers through the gate: an answer holding NaN, a lone
    surrogate or 10,000 levels of nesting is not handed to the agent; the next replica is asked instead."""
    from aiohttp import web

    from raftctl.agent.control import ControlClient
    from raftctl.errors import Unavailable

    answers = [b'{"machine": NaN}', b'{"machine": "\\ud800"}', b"[" * 10_000 + b"]" * 10_000, b'{"ok": 1}']

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=answers[int(request.match_info["n"])], content_type="application/json")

    app = web.Application()
    app.router.add_get("/{n}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with ControlClient([url], "t") as control:
            for n in range(3):
                with pytest.raises(Unavailable, match="answer"):
                    await control.request("GET", f"/{n}")
            assert await control.request("GET", "/3") == {"ok": 1}
    finally:
        await runner.cleanup()


def test_a_snapshot_file_envelope_passes_the_gate() -> None:
    """raftctl/statemachine/backup.decode (raftctl snapshot inspect/restore): a valid backup still decodes; a tag,
    a self-reference or deep nesting in the envelope is refused naming the file, before cbor2 builds anything."""
    from raftctl.statemachine import backup as snapshot
    from raftctl.statemachine.state import State

    backup = snapshot.take(State(), "n1", 1_700_000_000_000)
    assert snapshot.decode(backup.encode()) == backup
    envelope = cbor2.loads(backup.encode())
    for hostile in (SELF_REFERENCE, cbor2.dumps({**envelope, "node": cbor2.CBORTag(28, ["x"])}),
                    cbor2.dumps({**envelope, "saved_at": 2**64}), b"\x81" * 100_000 + b"\x00",
                    cbor2.dumps({**envelope, "state": b"x"})[:-1]):
        with pytest.raises(ValidationError) as exc:
            snapshot.decode(hostile)
        assert exc.value.field == "file"


# -- properties: the gate accepts every value within its bounds, in both encodings, and never anything else -------

from hypothesis import given, settings, strategies as st  # noqa: E402

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=5), max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=VALUES, canonical=st.booleans())
def test_every_value_within_bounds_passes_in_cbor_and_json(value: object, canonical: bool) -> None:
    assert gate.decode(cbor2.dumps(value, canonical=canonical), "cbor") == value
    assert gate.decode(json.dumps(value).encode(), "json") == value


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64) | VALUES.map(lambda v: cbor2.dumps(v)).flatmap(
    lambda b: st.integers(min_value=0, max_value=max(len(b) - 1, 0)).flatmap(
        lambda i: st.integers(min_value=0, max_value=255).map(lambda x: b[:i] + bytes([x]) + b[i + 1:]))))
def test_whatever_the_gate_accepts_cbor2_decodes_to_the_same_value(data: bytes) -> None:
    """Random and mutated CBOR: the scan and cbor2 agree; the gate never raises anything but ValidationError."""
    try:
        value = gate.decode(data, "cbor")
    except ValidationError:
        return
    assert value == cbor2.loads(data)


@pytest.mark.parametrize("manifest", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"schemaVersion": 2, "layers": [], "config": {"digest": NaN}}',
    b'{"schemaVersion": 2, "layers": [1], "config": {}}',
    b'{"schemaVersion": 2, "layers": [], "config": "x"}',
    b'{"schemaVersion": 2, "layers": [], "config": [1]}',
    b'{"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": 5}],'
    b' "config": {"digest": "sha256:' + b"0" * 64 + b'"}}',
    b'{"schemaVersion": 2, "layers": [], "config": {"digest": "\\ud800"}}',
], ids=["deep", "nan", "layer-not-object", "config-string", "config-list", "digest-int", "surrogate"])
def test_an_image_manifest_passes_the_gate_and_any_bad_shape_is_an_image_error(manifest: bytes) -> None:
    """oci.parse_manifest runs on the leader for PUT /v1/images/{name} (blobs.ensure_image): a RecursionError or
    AttributeError there was a 500; now every bad manifest is an ImageError (a 400 naming digest)."""
    from raftctl import oci

    with pytest.raises(oci.ImageError):
        oci.parse_manifest(manifest)


def test_the_gate_is_pure() -> None:
    """statemachine/spec.py imports it: no I/O, clock, randomness or event loop (the purity rule of DESIGN §3)."""
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(gate.__file__).read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not mods & {"asyncio", "time", "random", "uuid", "os", "socket", "threading", "datetime", "aiohttp"}, mods


@pytest.mark.parametrize("index", [b"[" * 100_000 + b"]" * 100_000, b"[1]", b'{"manifests": [1]}',
                                   b'{"manifests": {"a": 1}}', b'{"manifests": [{"digest": NaN}]}'])
def test_an_image_archive_index_passes_the_gate(tmp_path, index: bytes) -> None:
    """raftctl image import: an archive's index.json is decoded through the gate and its shape checked; each of these
    was a RecursionError/AttributeError traceback and is now an ImageError."""
    from raftctl.agent.images import ImageStore
    from raftctl.oci import ImageError

    with pytest.raises(ImageError):
        ImageStore(str(tmp_path / "store"))._register_index(index, None)


# -- the quick lane: a JSON document that cannot hold anything the walk refuses skips the walk ---------------------

HEARTBEAT = json.dumps({"machine": "m-004217", "sent_ms": 123456789, "stats": [
    {"placement": f"web-{i:03d}-7f3a", "job": "web", "cpu": 0.1234567 * i, "memory": 12345678 + i}
    for i in range(10)]}).encode()


@pytest.mark.parametrize("doc, quick", [
    (HEARTBEAT, True),                                   # what every machine sends the leader, a kilobyte
    (b'{"a": [1, -2.5e10, "x", null, true]}', True),
    (b'{"value": NaN}', True),                           # the C scanner's hook sends it back to the walk
    (b'{"a": 1, "a": 2}', True),                         # refused in the quick lane too (its pairs hook)
    (b'{"a": "\\u00e9"}', False),                        # any \u escape: it could be a lone surrogate
    (b'{"a": "\\ud800"}', False),
    (json.dumps({"n": 2**63}).encode(), False),          # 19 digits
    (b'{"id": "1234567890123456789"}', False),           # 19 digits in a string: walked, not refused
    (b'{"v": 1e308}', False), (b'{"v": 1.5E+400}', False), (b'{"v": 1e-400}', False),   # three-digit exponents
    (b"[" * 65 + b"]" * 65, False),                      # more brackets than levels allowed
    (json.dumps([0] * gate.MAX_ITEMS).encode(), False),  # longer than the smallest count bound
    ('{"a": 1}', False),                                 # a str: always walked
])
def test_which_documents_take_the_quick_lane(doc: bytes | str, quick: bool) -> None:
    assert gate.quick(doc, gate.DEFAULT) is quick


def _outcome(decode, *args) -> object:
    try:
        return ("value", decode(*args))
    except ValidationError as exc:
        return ("refused", exc.field)


RISKY = st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"-1e-999", b"9" * 19, b"-" + b"9" * 19, b'"\\ud800"',
                         b'"\\udfff"', b'"\\u00e9"', b'"a"', b"[]", b"{}", b"0", b"1e99", b"9" * 18, b'{"a":1,"a":2}'])


WIDE = st.recursive(
    SCALARS | st.integers() | st.floats() | st.sampled_from([2**63, -(2**63), 2**63 - 1, 10**19, 1e300, 1e-300])
    | st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=12)
"""Values past the gate's bounds too (integers of any size, NaN and infinities, lone surrogates) as JSON text."""


@settings(max_examples=600, deadline=None)
@given(data=WIDE.flatmap(lambda v: st.sampled_from([json.dumps(v), json.dumps(v, ensure_ascii=False)]))
       .map(lambda t: t.encode("utf-8", "surrogatepass")).flatmap(
    lambda b: st.integers(min_value=0, max_value=len(b)).flatmap(
        lambda i: st.one_of(st.just(b), RISKY.map(lambda r: b[:i] + r + b[i:]),
                            st.binary(min_size=1, max_size=1).map(lambda x: b[:i] + x + b[i + 1:]))))
       | st.binary(max_size=64))
def test_the_quick_lane_and_the_walk_agree_on_every_document(data: bytes) -> None:
    """Valid, mutated and spliced documents: the same value, or refused naming the same field, either way."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert _outcome(gate.decode_json, data) == _outcome(gate.walked_json, text)
