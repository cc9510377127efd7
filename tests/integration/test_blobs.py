"""Image blobs: verified by digest, copied to every replica, tagged through the log only once a majority
holds the manifest, its config and every layer."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from raftctl.agent.images import ImageStore
from raftctl.client import Client

from .conftest import client_for

pytestmark = pytest.mark.integration


def put(url: str, data: bytes, token: str, content_type: str = "application/octet-stream") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def tag(url: str, name: str, digest: str, size: int, token: str) -> tuple[int, dict]:
    return put(f"{url}/v1/images/{name}", json.dumps({"digest": digest, "size": size}).encode(), token,
               "application/json")


def on_disk(proc, digest: str) -> str:
    return os.path.join(proc.data_dir, "blobs", "sha256", digest.split(":")[1])


def holds(proc, digest: str) -> bool:
    path = on_disk(proc, digest)
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest() == digest


def local_image(tmp_path, content: bytes) -> tuple[ImageStore, str, dict]:
    """A one-layer image built in a throw-away store: (store, manifest digest, manifest)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_bytes(content)
    store = ImageStore(str(tmp_path / "store"))
    digest = store.build(str(src))
    return store, digest, store.manifest(digest)


def push(url: str, store: ImageStore, digest: str, token: str) -> None:
    with open(store.blob_path(digest), "rb") as f:
        status, body = put(f"{url}/v1/images/blobs/{digest}", f.read(), token)
    assert status == 200, body


def images(cluster) -> list[dict]:
    return client_for(cluster).request("GET", "/v1/images", query={"consistent": "1"})["images"]


def test_blob_push_is_verified_replicated_and_tagged(cluster, tmp_path):
    store, digest, m = local_image(tmp_path, os.urandom(300_000))
    layer = m["layers"][0]["digest"]
    with open(store.blob_path(layer), "rb") as f:
        blob = f.read()
    status, body = put(f"{cluster.urls[0]}/v1/images/blobs/{layer}", blob, cluster.token())
    assert status == 200 and body["replicas"] == 3 and body["size"] == len(blob)
    assert all(holds(p, layer) for p in cluster.servers)
    bad = "sha256:" + "0" * 64
    status, body = put(f"{cluster.urls[1]}/v1/images/blobs/{bad}", blob, cluster.token())
    assert status == 400 and body["error"]["code"] == "digest_mismatch"
    assert not any(os.path.exists(on_disk(p, bad)) for p in cluster.servers)
    for d in (m["config"]["digest"], digest):
        push(cluster.urls[0], store, d, cluster.token())
    c = client_for(cluster)
    c.request("PUT", "/v1/images/web:1", {"digest": digest, "size": store.image_size(digest)})
    assert {"name": "web:1", "digest": digest}.items() <= images(cluster)[0].items()
    req = urllib.request.Request(f"{cluster.urls[2]}/v1/images/blobs/{layer}",
                                 headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.read() == blob


def test_a_blob_not_a_manifest_cannot_be_tagged(cluster):
    blob = os.urandom(1000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert put(f"{cluster.urls[0]}/v1/images/blobs/{digest}", blob, cluster.token())[0] == 200
    status, body = tag(cluster.urls[1], "junk:1", digest, 1000, cluster.token())
    assert status == 400 and body["error"]["field"] == "digest" and "not an OCI image manifest" in \
        body["error"]["message"]
    assert "junk:1" not in {i["name"] for i in images(cluster)}


def test_tag_copies_a_blob_held_by_one_replica_to_a_majority(cluster, tmp_path):
    """A layer only one follower holds (its copy step failed, say): the tag sent to the other follower is
    forwarded to the leader, which fetches the layer from the holder before committing the tag."""
    store, digest, m = local_image(tmp_path, os.urandom(200_000))
    layer = m["layers"][0]["digest"]
    leader = cluster.leader()
    assert leader is not None
    holder, other = [p for p in cluster.servers if p is not leader]
    for d in (m["config"]["digest"], digest):
        push(leader.url, store, d, cluster.token())
    os.makedirs(os.path.dirname(on_disk(holder, layer)), exist_ok=True)
    shutil.copyfile(store.blob_path(layer), on_disk(holder, layer))      # straight into one replica's store
    assert [holds(p, layer) for p in cluster.servers].count(True) == 1

    status, body = tag(other.url, "one:1", digest, store.image_size(digest), cluster.token())
    assert status == 200, body
    assert [holds(p, layer) for p in cluster.servers].count(True) >= 2
    assert {"name": "one:1", "digest": digest}.items() <= \
        next(i for i in images(cluster) if i["name"] == "one:1").items()


def test_tag_of_an_image_whose_layer_no_replica_holds_is_refused(cluster, tmp_path):
    store, digest, m = local_image(tmp_path, os.urandom(100_000))
    layer = m["layers"][0]["digest"]
    for d in (m["config"]["digest"], digest):
        push(cluster.urls[0], store, d, cluster.token())
    before = images(cluster)

    status, body = tag(cluster.urls[2], "gone:1", digest, store.image_size(digest), cluster.token())
    assert status == 400, body
    assert body["error"]["code"] == "blob_missing" and body["error"]["field"] == "digest"
    assert layer in body["error"]["message"] and body["error"]["details"] == {"digest": layer}
    assert images(cluster) == before
    assert not any(os.path.exists(on_disk(p, layer)) for p in cluster.servers)


def test_client_push_and_tag_through_the_cli_path(cluster, tmp_path):
    """raftctl image build's push skips blobs a replica already holds; the tag still lands."""
    from raftctl.cli.image import push_and_tag

    store, digest, _ = local_image(tmp_path, b"hello")
    c = Client(cluster.urls, cluster.token(), retry_for=20.0)
    first = push_and_tag(c, store, "cli:1", digest)
    again = push_and_tag(c, store, "cli:2", digest)
    assert len(first["pushed"]) == 3 and again["pushed"] == [] and len(again["present"]) == 3
    assert {"cli:1", "cli:2"} <= {i["name"] for i in images(cluster)}
