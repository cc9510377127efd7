"""The write path cannot die, and retries are safe, through three real replicas on loopback.

The proposer's own defence against commands the log cannot carry (lone surrogates, deep nesting) is
specified in tests/unit/test_proposer.py; the HTTP input gate may refuse such bodies before they reach
it. Here: whatever the gate answers, the cluster still takes writes and consistent reads afterwards,
and a token create retried with the same X-Request-Id prints a token that works.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from .conftest import SPEC, raw, wait_until

pytestmark = pytest.mark.integration


def call(url: str, method: str = "GET", body: dict | bytes | None = None, token: str | None = None,
         request_id: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if request_id:
        headers["X-Request-Id"] = request_id
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def leader_url(cluster) -> str:
    return wait_until(cluster.leader, what="a leader").url


def test_a_lone_surrogate_in_a_job_does_not_stop_writes_or_reads(cluster):
    url, token = leader_url(cluster), cluster.token()
    # JSON text with the escape \ud800: a string Python holds but UTF-8 (and so CBOR) cannot
    bad = ('{"name": "surr", "image": "web:1", "command": ["true"], "replicas": 1, '
           '"env": {"GREETING": "\\ud800"}}').encode()
    status, answer = call(url + "/v1/jobs/surr", "PUT", bad, token)
    assert status == 400 and answer["error"]["field"], answer  # the gate's or the proposer's 400, naming a field
    # the write path is alive on every replica: a write through each commits, a consistent read answers
    for i, p in enumerate(cluster.servers):
        status, answer = call(p.url + f"/v1/jobs/after-{i}", "PUT", {**SPEC, "name": f"after-{i}"}, token)
        assert status == 200, answer
        status, answer = call(p.url + f"/v1/jobs/after-{i}?consistent=1", token=token)
        assert status == 200 and answer["version"] == 1, answer


def test_a_retried_token_create_prints_a_token_that_works(cluster):
    token = cluster.token()
    rid = f"tok-{uuid.uuid4().hex[:12]}"
    body = {"role": "reader", "name": f"retry-{rid[4:]}"}
    s1, first = call(cluster.urls[0] + "/v1/tokens", "POST", body, token, request_id=rid)
    assert s1 == 200, first
    # the client lost the answer and retries, through another replica
    s2, second = call(cluster.urls[1] + "/v1/tokens", "POST", body, token, request_id=rid)
    assert s2 == 200, second
    assert second["token"] == first["token"] and second["index"] == first["index"]
    for p in cluster.servers:
        status, answer = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
            raw(p.url + "/v1/status", token=second["token"])), what="the retried token to work")
        assert status == 200
    # the same id on a revoke is a conflict naming X-Request-Id, and revokes nothing
    status, answer = call(cluster.urls[0] + f"/v1/tokens/{body['name']}", "DELETE", token=token, request_id=rid)
    assert status == 409 and answer["error"]["code"] == "request_id_conflict", answer
    assert answer["error"]["field"] == "X-Request-Id"
    assert raw(cluster.urls[0] + "/v1/status", token=second["token"])[0] == 200
