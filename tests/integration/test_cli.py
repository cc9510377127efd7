"""The CLI against a real cluster, and `raftctl up` as a user runs it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import dns.message as dmsg
import dns.query as dquery
import pytest

import yaml

from .conftest import agents_cluster, wait_until

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def raftctl(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=60, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"raftctl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def test_cli_job_lifecycle(cluster, tmp_path):
    env = {"RAFTCTL_SERVER": " ".join(cluster.urls), "RAFTCTL_TOKEN": cluster.token()}
    spec = tmp_path / "api.yaml"
    spec.write_text("name: api\nimage: api:1\ncommand: [sleep, '100']\nreplicas: 2\nresources: {memory: 32Mi}\n")
    out = raftctl("job", "run", "--detach", str(spec), env=env).stdout  # no agents here: nothing would roll out
    assert "job api version 1 submitted" in out
    assert "unchanged" in raftctl("job", "run", "--detach", str(spec), env=env).stdout
    jobs = json.loads(raftctl("-o", "json", "job", "list", env=env).stdout)
    assert "api" in [j["name"] for j in jobs["jobs"]]
    table = raftctl("job", "list", env=env).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATUS", "VERSION"]
    spec.write_text(spec.read_text().replace("api:1", "api:2"))
    raftctl("job", "run", "--detach", str(spec), env=env)
    versions = json.loads(raftctl("-o", "json", "job", "versions", "api", env=env).stdout)["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert "now version 3" in raftctl("job", "rollback", "api", "1", env=env).stdout
    assert "scaled 2 -> 4" in raftctl("job", "scale", "api", "4", env=env).stdout
    status = json.loads(raftctl("-o", "json", "job", "status", "api", env=env).stdout)
    assert status["job"]["replicas"] == 4 and status["job"]["spec"]["image"] == "api:1"
    assert "stopping" in raftctl("job", "stop", "api", env=env).stdout
    st = json.loads(raftctl("-o", "json", "cluster", "status", env=env).stdout)
    assert st["leader"] and len(st["members"]) == 3


def test_cli_errors_are_one_line_and_nonzero(cluster, tmp_path):
    env = {"RAFTCTL_SERVER": cluster.urls[0], "RAFTCTL_TOKEN": cluster.token()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nimage: x:1\ncommand: [x]\nreplicas: many\n")
    p = raftctl("job", "run", str(bad), env=env, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: replicas") and len(p.stderr.strip().splitlines()) == 1
    p = raftctl("job", "status", "nope", env=env, check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = raftctl("job", "list", env={"RAFTCTL_SERVER": cluster.urls[0], "RAFTCTL_TOKEN": ""}, check=False)
    assert p.returncode == 2 and "token" in p.stderr
    p = raftctl("job", "list", env={"RAFTCTL_SERVER": "http://127.0.0.1:9", "RAFTCTL_TOKEN": "x",
                                    "RAFTCTL_RETRY_FOR": "1"}, check=False)
    assert p.returncode == 1 and "no replica answered" in p.stderr


def test_cli_fails_over_between_servers(cluster):
    env = {"RAFTCTL_SERVER": f"http://127.0.0.1:9 {cluster.urls[0]}", "RAFTCTL_TOKEN": cluster.token()}
    assert json.loads(raftctl("-o", "json", "job", "list", env=env).stdout)["jobs"] is not None


def test_token_create_and_reader_cannot_write(cluster, tmp_path):
    env = {"RAFTCTL_SERVER": cluster.urls[0], "RAFTCTL_TOKEN": cluster.token()}
    token = raftctl("token", "create", "--role", "reader", "--name", "cli-ro", env=env).stdout.strip()
    assert token.startswith("rct_")
    spec = tmp_path / "x.json"
    spec.write_text(json.dumps({"name": "x", "image": "x:1", "command": ["x"]}))
    p = raftctl("job", "run", str(spec), env={**env, "RAFTCTL_TOKEN": token}, check=False)
    assert p.returncode == 2 and "role reader" in p.stderr


@pytest.fixture(scope="module")
def sim_cluster(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "cli-sim", agents=2, runtime="sim", zones=2) as c:
        yield c


def test_job_run_follows_with_global_options_after_the_subcommand(sim_cluster, tmp_path):
    """`job run FILE -o ... --server ... --token ...`: the options after the subcommand decide, as before it."""
    c = sim_cluster
    flags = ["--server", ",".join(c.urls), "--token", c.token()]
    spec = tmp_path / "sim.yaml"
    spec.write_text("name: simweb\nimage: sim:1\ncommand: [serve]\nreplicas: 2\nresources: {memory: 32Mi}\n")
    # -o json before, -o wide after: wide wins, so no terminal -> it follows in plain progress lines
    run = raftctl("-o", "json", "job", "run", str(spec), "-o", "wide", *flags, env={"RAFTCTL_SERVER": "",
                                                                                  "RAFTCTL_TOKEN": ""}).stdout
    lines = run.splitlines()
    assert lines[0] == "job simweb version 1 submitted" + lines[0][len("job simweb version 1 submitted"):]
    assert lines[-1] == "simweb v1: rolled out, 2/2 healthy", run
    assert all(re.fullmatch(r"job simweb .*|  \S+: .*|simweb v1: [0-2]/2 healthy.*|simweb v1: rolled out, 2/2 healthy",
                            ln) for ln in lines), run
    assert "\x1b" not in run and "\r" not in run
    # -o json after the subcommand: one JSON object, detached (nothing followed)
    spec.write_text(spec.read_text().replace("replicas: 2", "replicas: 3"))
    out = raftctl("job", "run", str(spec), "-o", "json", *flags).stdout
    assert json.loads(out)["version"] == 2
    # -o yaml after the subcommand with --wait: the submit answer, then the job's events, each a YAML document
    spec.write_text(spec.read_text().replace("replicas: 3", "replicas: 2") + "env: {V: '3'}\n")
    docs = list(yaml.safe_load_all(raftctl("job", "run", "--wait", "--timeout", "40", str(spec), *flags,
                                           "-o", "yaml").stdout))
    assert docs[0]["name"] == "simweb" and docs[0]["version"] == 3
    assert {"deploy", "placement.retire"} <= {d["kind"] for d in docs[1:]} and all(
        d["job"] == "simweb" for d in docs[1:]), docs
    # Version 5 is version 3's spec again, submitted before version 4 rolled out: the replicas still running
    # version 3 are current (as the rollout controller sees them), so following ends (it waited for replicas
    # of version 5 until --timeout before)
    v3 = spec.read_text()
    spec.write_text(v3.replace("replicas: 2", "replicas: 3"))
    assert json.loads(raftctl("job", "run", str(spec), *flags, "-o", "json").stdout)["version"] == 4
    spec.write_text(v3)
    run = raftctl("job", "run", "--timeout", "40", str(spec), *flags, "-o", "table").stdout
    assert run.splitlines()[-1] == "simweb v5: rolled out, 2/2 healthy", run
    status = yaml.safe_load(raftctl("job", "status", "simweb", *flags, "-o", "yaml").stdout)
    assert status["job"]["version"] == 5 and status["job"]["counts"]["healthy"] == 2


def test_up_writes_env_stops_on_ctrl_c_and_resumes(tmp_path):
    d = tmp_path / "dev"

    up_out = tmp_path / "up.out"

    def start() -> subprocess.Popen:
        # `up`'s output goes to a file, not a pipe nobody reads until the end: a full pipe would stall it
        with open(up_out, "w") as out_file:
            return subprocess.Popen([sys.executable, "-m", "raftctl.cli.main", "up", "--dir", str(d),
                                     "--runtime", "process"], cwd=ROOT, stdout=out_file, stderr=subprocess.STDOUT)
    proc = start()
    try:
        wait_until(lambda: (d / "env").exists() and "cluster up" in (d / "cluster.json").read_text() or
                   (d / "env").exists(), timeout=60, what="env file")
        env_text = (d / "env").read_text()
        assert "RAFTCTL_SERVER=" in env_text and "RAFTCTL_TOKEN=" in env_text
        assert oct((d / "env").stat().st_mode & 0o777) == "0o600"
        layout = json.loads((d / "cluster.json").read_text())
        assert [p["role"] for p in layout["processes"]] == ["server"] * 3 + ["agent"] * 3
        assert all(p["pid"] for p in layout["processes"])
        env = dict(line.replace("export ", "").split("=", 1) for line in env_text.splitlines())
        env = {k: v.strip("'") for k, v in env.items()}
        spec = tmp_path / "w.json"
        spec.write_text(json.dumps({"name": "keep", "image": "k:1", "command": ["python3", "-m", "http.server",
                                                                                "${PORT_HTTP}"],
                                    "ports": [{"name": "http"}], "replicas": 2,
                                    "health": {"type": "http", "port": "http"}}))
        # Without a terminal `job run` still follows the rollout, in plain lines, and returns once it is done.
        run = raftctl("job", "run", str(spec), env=env).stdout
        lines = run.splitlines()
        assert lines[0].startswith("job keep version 1 submitted") and lines[-1] == "keep v1: rolled out, 2/2 healthy"
        assert "keep v1: 2/2 healthy" in lines and all(  # progress lines, each a whole line
            re.fullmatch(r"job keep .*|  \S+: .*|keep v1: [0-2]/2 healthy.*|keep v1: rolled out, 2/2 healthy", ln)
            for ln in lines), run
        assert "\x1b" not in run and "\r" not in run  # no bar, no terminal codes
        eps = json.loads(raftctl("-o", "json", "discover", "keep", env=env).stdout)["endpoints"]
        assert len(eps) == 2
        for e in eps:
            with urllib.request.urlopen(f"http://{e['address']}:{e['port']}/", timeout=5) as r:
                assert r.status == 200
        # DNS: on the fixed port (8600 unless taken), no token, the same endpoints as `discover`.
        dns_port = json.loads((d / "cluster.json").read_text())["processes"][0]["dns"]
        srv = dquery.udp(dmsg.make_query("keep.service.raftctl", "SRV"), "127.0.0.1", port=dns_port, timeout=3)
        assert sorted((r.target.to_text(), r.port) for r in srv.answer[0]) == sorted(
            (f"{e['placement']}.keep.service.raftctl.", e["port"]) for e in eps)
        # Each agent's own endpoint: in `machine list -o wide`, and in one line of its log.
        table = raftctl("-o", "wide", "machine", "list", env=env).stdout.splitlines()
        assert table[0].split()[-1] == "ENDPOINT"
        machines = json.loads(raftctl("-o", "json", "machine", "list", env=env).stdout)["machines"]
        for m in machines:
            assert m["api"].startswith("http://127.0.0.") and any(
                ln.split()[0] == m["id"] and ln.split()[-1] == m["api"] for ln in table[1:]), (m, table)
            log = (d / m["id"] / "agent.log").read_text()
            assert f"agent {m['id']}: endpoint {m['api']} (GET /metrics" in log
        assert "ENDPOINT" not in raftctl("machine", "list", env=env).stdout  # the plain table stays narrow
        # --state keeps the machines in those states (every machine here is active; none is down)
        assert json.loads(raftctl("-o", "json", "machine", "list", "--state", "active", env=env).stdout)[
            "machines"] == machines
        assert json.loads(raftctl("-o", "json", "machine", "list", "--state", "down", env=env).stdout)[
            "machines"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    out = up_out.read_text()
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert f"dns 127.0.0.1:{dns_port}" in out and f"dig @127.0.0.1 -p {dns_port} web.service.raftctl SRV" in out
    assert all(f"endpoint {m['api']} (/metrics, /v1/logs)" in out for m in machines), out
    for p in layout["processes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(p["pid"], 0)
    proc = start()
    try:
        wait_until(lambda: json.loads((d / "cluster.json").read_text())["processes"][0]["pid"] != layout["processes"][0]["pid"],
                   timeout=60, what="second up")
        time.sleep(0.2)
        job = json.loads(raftctl("-o", "json", "job", "status", "keep", env=env).stdout)
        assert job["job"]["spec"]["image"] == "k:1"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
