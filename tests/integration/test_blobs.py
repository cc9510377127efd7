"""Image blobs: verified by digest, copied to every replica, tagged through the log."""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request

import pytest

from .conftest import client_for

pytestmark = pytest.mark.integration


def put(url: str, data: bytes, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_blob_push_is_verified_replicated_and_tagged(cluster):
    blob = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, body = put(f"{cluster.urls[0]}/v1/images/blobs/{digest}", blob, cluster.token())
    assert status == 200 and body["replicas"] == 3 and body["size"] == len(blob)
    for p in cluster.servers:
        assert os.path.exists(os.path.join(p.data_dir, "blobs", "sha256", digest.split(":")[1]))
    bad = "sha256:" + "0" * 64
    status, body = put(f"{cluster.urls[1]}/v1/images/blobs/{bad}", blob, cluster.token())
    assert status == 400 and body["error"]["code"] == "digest_mismatch"
    assert not any(os.path.exists(os.path.join(p.data_dir, "blobs", "sha256", "0" * 64)) for p in cluster.servers)
    c = client_for(cluster)
    c.request("PUT", "/v1/images/web:1", {"digest": digest, "size": len(blob)})
    images = c.request("GET", "/v1/images", query={"consistent": "1"})["images"]
    assert {"name": "web:1", "digest": digest} .items() <= images[0].items()
    req = urllib.request.Request(f"{cluster.urls[2]}/v1/images/blobs/{digest}",
                                 headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.read() == blob
