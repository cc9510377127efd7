"""Images end to end: `raftctl image build|import|list` push to the control plane, jobs store the
digest, runc agents pull it by digest and run the same bytes on every machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import urllib.request

import pytest

from raftctl import oci
from raftctl.agent.images import ImageStore
from raftctl.devcluster import LocalCluster
from tests.agent.conftest import root_runc  # noqa: F401  (the loud skip without root and runc)
from tests.agent.test_images import tree_digest

from .conftest import client_for, wait_until

pytestmark = pytest.mark.integration


def cli(c: LocalCluster, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token() or ""}
    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    if ok:
        assert p.returncode == 0, f"{args}: {p.stderr}"
    return p


def site(tmp_path, text: str) -> str:
    d = tmp_path / f"site-{abs(hash(text))}"
    d.mkdir()
    (d / "index.html").write_text(text)
    return str(d)


# -- the CLI against a control plane (no agents, no root needed) -----------------------------

def test_build_pushes_every_blob_once_and_tags(cluster, tmp_path):
    src = site(tmp_path, "hello\n")
    out = json.loads(cli(cluster, "-o", "json", "image", "build", src, "--name", "cli-web:1").stdout)
    assert out["name"] == "cli-web:1" and out["digest"].startswith("sha256:")
    assert len(out["pushed"]) == 3 and out["present"] == []         # config, layer, manifest
    for p in cluster.servers:                                        # copied to every replica
        for d in out["pushed"]:
            assert os.path.exists(os.path.join(p.data_dir, "blobs", "sha256", d.split(":")[1]))
    again = json.loads(cli(cluster, "-o", "json", "image", "build", src, "--name", "cli-web:2").stdout)
    assert again["digest"] == out["digest"] and again["pushed"] == []   # same dir, same digest, nothing sent
    listed = json.loads(cli(cluster, "-o", "json", "image", "list").stdout)["images"]
    by_name = {i["name"]: i for i in listed}
    assert by_name["cli-web:1"]["digest"] == by_name["cli-web:2"]["digest"] == out["digest"]
    assert by_name["cli-web:1"]["size"] == out["size"] > 0
    table = cli(cluster, "image", "list").stdout
    assert table.splitlines()[0].split() == ["NAME", "DIGEST", "SIZE", "INDEX"] and "cli-web:1" in table
    cli(cluster, "image", "build", src, "--name", "team/cli-web:1")   # names may hold a slash
    images = client_for(cluster).request("GET", "/v1/images", query={"consistent": "1"})["images"]
    assert {"name": "team/cli-web:1", "digest": out["digest"]}.items() <= {i["name"]: i for i in images}[
        "team/cli-web:1"].items()


def test_import_of_an_oci_layout_archive(cluster, tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    digest = store.build(site(tmp_path, "imported\n"), base="scratch")
    layout = tmp_path / "layout"
    store.export_layout(digest, str(layout), name="imp:1")
    archive = tmp_path / "imp.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    out = json.loads(cli(cluster, "-o", "json", "image", "import", str(archive)).stdout)["images"]
    assert [(i["name"], i["digest"]) for i in out] == [("imp:1", digest)]
    out = json.loads(cli(cluster, "-o", "json", "image", "import", str(archive), "--name", "imp:renamed").stdout)
    assert out["images"][0]["name"] == "imp:renamed" and out["images"][0]["pushed"] == []
    images = {i["name"]: i["digest"] for i in client_for(cluster).request("GET", "/v1/images")["images"]}
    assert images["imp:1"] == images["imp:renamed"] == digest


def test_tagging_on_a_replica_that_missed_the_push_fetches_the_manifest_from_a_peer(cluster, tmp_path):
    """A replica that was away during a push (here: every blob stored on one follower only) still tags it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    store = ImageStore(str(tmp_path / "store"))
    digest = store.build(str(src))
    m = store.manifest(digest)
    leader = cluster.leader()
    follower = next(p for p in cluster.servers if p is not leader)
    for d in (m["config"]["digest"], m["layers"][0]["digest"], digest):
        req = urllib.request.Request(f"{follower.url}/v1/images/blobs/{d}", data=open(store.blob_path(d), "rb").read(),
                                     method="PUT", headers={"Authorization": f"Bearer {cluster.token()}",
                                                            "X-Raftctl-Forwarded": "test",
                                                            "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=20) as r:
            assert json.loads(r.read())["replicas"] == 1                 # stored there only
    path = os.path.join(leader.data_dir, "blobs", "sha256", digest.split(":")[1])
    assert not os.path.exists(path)
    size = store.image_size(digest)
    res = client_for(cluster, leader).request("PUT", "/v1/images/away:1", {"digest": digest, "size": size})
    assert res["digest"] == digest and open(path, "rb").read() == open(store.blob_path(digest), "rb").read()


BAD = [
    ("missing dir", ["image", "build", "/nonexistent/dir", "--name", "web:1"], "DIR: /nonexistent/dir: no such directory"),
    ("name without tag", ["image", "build", ".", "--name", "web"], "--name: 'web' is not an image name"),
    ("upper-case name", ["image", "build", ".", "--name", "Web:1"], "--name: 'Web:1' is not an image name"),
    ("missing archive", ["image", "import", "/nonexistent.tar"], "FILE: /nonexistent.tar: no such file"),
    ("import bad name", ["image", "import", "/nonexistent.tar", "--name", "a b:1"], "--name: 'a b:1' is not"),
]


@pytest.mark.parametrize("case,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(cluster, case, args, message):
    p = cli(cluster, *args, ok=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_import_rejects_what_is_not_an_image_layout(cluster, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    p = cli(cluster, "image", "import", str(junk), ok=False)
    assert p.returncode == 2 and "FILE:" in p.stderr and "not a valid OCI image layout archive" in p.stderr
    unnamed = tmp_path / "unnamed.tar"
    store = ImageStore(str(tmp_path / "s"))
    d = store.build(site(tmp_path, "x\n"))
    store.export_layout(d, str(tmp_path / "l"))                      # no ref.name annotation
    with tarfile.open(unnamed, "w") as tar:
        tar.add(tmp_path / "l", arcname=".")
    p = cli(cluster, "image", "import", str(unnamed), ok=False)
    assert p.returncode == 2 and "--name:" in p.stderr and "names no image" in p.stderr


# -- runc agents pull by digest and run the same bytes (root) --------------------------------

@pytest.fixture(scope="module")
def runc_cluster(root_runc, tmp_path_factory):
    c = LocalCluster(str(tmp_path_factory.mktemp("runc-images")), replicas=3, agents=2, runtime="runc",
                     agent_args=["--heartbeat", "300ms"])
    c.start(timeout=60)
    try:
        c.wait_agents(60)
        yield c
    finally:
        c.stop()


# network: host: runc agents on this machine's own network namespace; bridge mode would make bridges, routes
# and nftables rules there (tests/agent/test_bridge.py tests it in namespaces of its own)
WEB = {"name": "web", "image": "web:1", "base": "host", "network": "host",
       "command": ["python3", "-m", "http.server", "${PORT_HTTP}"], "replicas": 2,
       "resources": {"cpu": "100m", "memory": "64Mi", "pids": 64}, "ports": [{"name": "http"}],
       "spread": [{"level": "zone", "mode": "hard"}],
       # 20 failed checks (6 s) before a restart: python under a 100m CPU quota needs ~0.6 s of wall time to
       # start on an idle machine and several seconds on a loaded one (3 failures restarted it forever at load 5)
       "health": {"type": "http", "port": "http", "path": "/", "interval": "300ms", "timeout": "500ms",
                  "failures": 20},
       "update": {"max_unavailable": 1, "min_healthy": "300ms", "drain_delay": "200ms", "deadline": "60s"}}


def healthy(c: LocalCluster, job: str, version: int) -> list[dict]:
    pl = client_for(c).request("GET", f"/v1/jobs/{job}/placements")["placements"]
    return [p for p in pl if p["desired"] == "run" and p["state"] == "running" and p["health"] == "healthy"
            and p["version"] == version]


def fetch(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/index.html", timeout=5) as r:
        return r.read().decode()


def served(c: LocalCluster, job: str) -> list[str]:
    eps = client_for(c).request("GET", f"/v1/discovery/{job}")["endpoints"]
    return sorted(fetch(e["address"], e["port"]) for e in eps)


def write_spec(tmp_path, spec: dict) -> str:
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.root
def test_runc_agents_pull_by_digest_run_identical_roots_and_deploy_a_retag(runc_cluster, tmp_path):
    c = runc_cluster
    d1 = json.loads(cli(c, "-o", "json", "image", "build", site(tmp_path, "v1\n"), "--name", "web:1",
                        "--base", "host").stdout)["digest"]
    spec_file = write_spec(tmp_path, WEB)
    run = json.loads(cli(c, "-o", "json", "job", "run", "--detach", spec_file).stdout)
    assert run["version"] == 1 and run["image_digest"] == d1
    wait_until(lambda: len(healthy(c, "web", 1)) == 2, timeout=90, what="2 healthy runc replicas of version 1")
    placements = healthy(c, "web", 1)
    assert len({p["machine"] for p in placements}) == 2
    wait_until(lambda: served(c, "web") == ["v1\n", "v1\n"], timeout=30, what="both replicas serving v1")

    # every machine pulled the same blobs and unpacked the same tree; each container runs that digest
    roots = []
    for a in c.agents:
        store = ImageStore(os.path.join(a.data_dir, "runc", "images"))
        assert store.has_blob(d1) and oci.sha256_file(store.blob_path(d1)) == d1
        roots.append(tree_digest(store.unpacked_path(d1)))
        for p in placements:
            if p["machine"] == a.id:
                with open(os.path.join(a.data_dir, "runc", "containers", p["id"], "config.json")) as f:
                    assert json.load(f)["annotations"]["raftctl.image"] == d1
    assert roots[0] == roots[1]

    # re-tagging alone changes nothing that runs; job run of the same spec is a deploy of the new digest
    d2 = json.loads(cli(c, "-o", "json", "image", "build", site(tmp_path, "v2\n"), "--name", "web:1",
                        "--base", "host").stdout)["digest"]
    assert d2 != d1
    job = client_for(c).request("GET", "/v1/jobs/web")
    assert job["version"] == 1 and job["spec"]["image_digest"] == d1
    assert served(c, "web") == ["v1\n", "v1\n"]
    run = json.loads(cli(c, "-o", "json", "job", "run", "--detach", spec_file).stdout)
    assert run["version"] == 2 and run["image_digest"] == d2
    wait_until(lambda: len(healthy(c, "web", 2)) == 2 and not healthy(c, "web", 1), timeout=120,
               what="the deploy of version 2")
    wait_until(lambda: served(c, "web") == ["v2\n", "v2\n"], timeout=30, what="both replicas serving v2")


@pytest.mark.root
def test_runc_job_naming_an_unpushed_image_fails_its_placements_clearly(runc_cluster, tmp_path):
    c = runc_cluster
    spec = {**WEB, "name": "ghost", "image": "ghost:1", "replicas": 1, "spread": []}
    client_for(c).request("PUT", "/v1/jobs/ghost", spec)

    def reason() -> str:
        pl = client_for(c).request("GET", "/v1/jobs/ghost/placements")["placements"]
        return " ".join(p["reason"] or "" for p in pl)
    text = wait_until(lambda: "is not pushed" in reason() and reason(), timeout=60, what="a clear failure")
    assert "image ghost:1 is not pushed" in text and "raftctl image build" in text
    client_for(c).request("DELETE", "/v1/jobs/ghost")
