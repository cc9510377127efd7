"""Config files for `raftctl server` / `raftctl agent`: TOML equivalent to the flags, flags win, bad keys named."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from raftctl.cli.main import cli
from raftctl.config import load_config, option_keys
from raftctl.devcluster import free_port
from raftctl.errors import ValidationError

SERVER = cli.commands["server"]
AGENT = cli.commands["agent"]


def write(tmp_path, text: str, name: str = "c.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def params(command, argv: list[str]) -> dict:
    """What the command would run with: click's parse, without running it."""
    ctx = command.make_context(command.name, argv)
    return ctx.params


SERVER_TOML = """
id = "n1"
data_dir = "/var/lib/raftctl"
raft = "10.0.0.1:7000"
peers = ["10.0.0.2:7000", "10.0.0.3:7000"]
api = "10.0.0.1:8000"
secret_file = "/etc/raftctl/secret"
tls_cert = "/etc/raftctl/tls/server.crt"
tls_key = "/etc/raftctl/tls/server.key"
tls_ca = "/etc/raftctl/tls/ca.crt"
dns_port = 8600
compact_entries = 5000
heartbeat_ttl = "5s"
log_level = "warning"
"""


@pytest.mark.parametrize("command, text, expected", [
    (SERVER, SERVER_TOML, {
        "node_id": "n1", "data_dir": "/var/lib/raftctl", "raft_addr": "10.0.0.1:7000",
        "peers": ("10.0.0.2:7000", "10.0.0.3:7000"), "api_addr": "10.0.0.1:8000",
        "secret_file": "/etc/raftctl/secret", "tls_cert": "/etc/raftctl/tls/server.crt",
        "tls_key": "/etc/raftctl/tls/server.key", "tls_ca": "/etc/raftctl/tls/ca.crt", "dns_port": 8600,
        "compact_entries": 5000, "heartbeat_ttl": "5s", "heartbeat_interval": "1s", "log_level": "warning",
        "insecure_dev": False}),
    # the singular flag name works for a repeatable flag too, and a single string for a list
    (SERVER, 'id = "n2"\ndata_dir = "/d"\nraft = "h:1"\npeer = "h:2"\napi = "h:3"\ninsecure_dev = true\n',
     {"node_id": "n2", "peers": ("h:2",), "insecure_dev": True}),
    (AGENT, """
id = "m1"
servers = ["https://10.0.0.1:8000", "https://10.0.0.2:8000"]
token_file = "/etc/raftctl/agent-token"
data_dir = "/var/lib/raftctl-agent"
fault_domain = "region=eu,zone=z1,rack=r7"
labels = ["ssd=true", "gpu=false"]
advertise = "10.0.1.11"
runtime = "runc"
pids = 8192
http_port = 7100
tls_cert = "/etc/raftctl/tls/agent-m1.crt"
tls_key = "/etc/raftctl/tls/agent-m1.key"
tls_ca = "/etc/raftctl/tls/ca.crt"
""", {"machine": "m1", "servers": ("https://10.0.0.1:8000", "https://10.0.0.2:8000"),
      "token_file": "/etc/raftctl/agent-token", "fault_domain": ("region=eu,zone=z1,rack=r7",),
      "labels": ("ssd=true", "gpu=false"), "runtime": "runc", "pids": 8192, "http_port": 7100, "advertise": "10.0.1.11",
      "tls_ca": "/etc/raftctl/tls/ca.crt"}),
])
def test_a_good_file_gives_the_same_settings_as_the_flags(tmp_path, monkeypatch, command, text, expected):
    for var in ("RAFTCTL_SERVER", "RAFTCTL_SECRET", "RAFTCTL_AGENT_TOKEN", "RAFTCTL_CA_CERT"):
        monkeypatch.delenv(var, raising=False)
    got = params(command, ["--config", write(tmp_path, text)])
    for key, value in expected.items():
        assert got[key] == value, key


def test_flags_on_the_command_line_override_the_file(tmp_path):
    path = write(tmp_path, SERVER_TOML)
    got = params(SERVER, ["--api", "10.0.0.1:9000", "--config", path, "--peer", "10.0.0.9:7000"])
    assert got["api_addr"] == "10.0.0.1:9000"
    assert got["peers"] == ("10.0.0.9:7000",)  # a repeated flag replaces the file's list, it does not add to it
    assert got["raft_addr"] == "10.0.0.1:7000"


def test_relative_paths_are_taken_from_the_files_directory(tmp_path):
    os.makedirs(tmp_path / "etc")
    path = write(tmp_path, 'id = "n1"\ndata_dir = "data"\nraft = "h:1"\napi = "h:2"\nsecret_file = "secret"\n'
                           'tls_cert = "tls/server.crt"\n', "etc/server.toml")
    got = params(SERVER, ["--config", path])
    assert got["data_dir"] == str(tmp_path / "etc" / "data")
    assert got["secret_file"] == str(tmp_path / "etc" / "secret")
    assert got["tls_cert"] == str(tmp_path / "etc" / "tls" / "server.crt")
    assert got["raft_addr"] == "h:1"  # not a path


@pytest.mark.parametrize("command, text, key, message", [
    (SERVER, 'data_dirr = "/x"\n', "data_dirr", "unknown key"),
    (SERVER, 'node_id = "n1"\n', "node_id", "unknown key"),          # the Python name is not a key
    (SERVER, 'config = "/etc/other.toml"\n', "config", "unknown key"),
    (SERVER, 'dns_port = "53"\n', "dns_port", "must be an integer, not a string"),
    (SERVER, 'dns_port = true\n', "dns_port", "must be an integer, not a boolean"),
    (SERVER, 'compact_entries = 1\n', "compact_entries", "1 is not in the range x>=2"),
    (SERVER, 'insecure_dev = "yes"\n', "insecure_dev", "must be a boolean"),
    (SERVER, 'api = 8000\n', "api", "must be a string, not an integer"),
    (SERVER, 'peers = "h:1"\npeer = ["h:2"]\n', "peer", "give it once"),
    (SERVER, 'peers = [7000]\n', "peers[0]", "must be a string, not an integer"),
    (SERVER, 'peers = {a = 1}\n', "peers", "must be an array of strings or a string, not a table"),
    (SERVER, 'log_level = "verbose"\n', "log_level", "'verbose' is not one of debug, info, warning, error"),
    (SERVER, '[server]\nid = "n1"\n', "server", "unknown key"),
    (AGENT, 'runtime = "docker"\n', "runtime", "is not one of runc, process, sim"),
    (AGENT, 'count = 0\n', "count", "0 is not in the range"),
    (AGENT, 'peers = ["h:1"]\n', "peers", "unknown key"),              # a server key in an agent file
])
def test_a_bad_key_or_type_is_an_error_naming_the_key_and_the_file(tmp_path, command, text, key, message):
    path = write(tmp_path, text)
    with pytest.raises(ValidationError) as err:
        load_config(path, command)
    assert err.value.field == key
    assert message in err.value.message
    assert err.value.message.startswith(f"{key} in {path}:")
    # and through the CLI: one line naming both, exit 2, nothing started
    result = CliRunner().invoke(cli, [command.name, "--config", path])
    assert result.exit_code == 2, result.output
    assert f"{key} in {path}:" in result.output


@pytest.mark.parametrize("text, message", [
    ('id = "n1"\nid = "n2"\n', "is not valid TOML"),
    ("id = n1\n", "is not valid TOML"),
])
def test_a_file_that_is_not_toml_is_an_error_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValidationError) as err:
        load_config(path, SERVER)
    assert err.value.field == "--config" and path in err.value.message and message in err.value.message


def test_a_missing_file_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["server", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output and "nope.toml" in result.output


def test_every_flag_has_a_key():
    keys = option_keys(SERVER)
    for p in SERVER.params:
        if p.name not in ("config", "help"):
            assert p.name in {o.name for o in keys.values()}, p.name
    assert {"data_dir", "raft", "peer", "peers", "api", "secret_file", "tls_cert", "tls_key", "tls_ca"} <= set(keys)
    assert {"server", "servers", "token_file", "label", "labels", "tls_ca"} <= set(option_keys(AGENT))


@pytest.mark.integration
def test_a_server_runs_from_a_config_file_alone(tmp_path):
    """One replica with nothing on its command line but --config: HTTPS API, bootstrap token, a write."""
    from raftctl.client import Client
    from raftctl.node.auth import new_token, write_secret_file
    from raftctl.tls import init_tls

    etc = tmp_path / "etc"
    init_tls(str(etc / "tls"))
    write_secret_file(str(etc / "secret"), new_token())
    raft, api = free_port(), free_port()
    path = write(tmp_path, f"""
id = "solo"
data_dir = "../var"
raft = "127.0.0.1:{raft}"
api = "127.0.0.1:{api}"
secret_file = "secret"
tls_cert = "tls/server.crt"
tls_key = "tls/server.key"
tls_ca = "tls/ca.crt"
heartbeat_ttl = "4s"
""", "etc/server.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCTL_")}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "raftctl.cli.main", "server", "--config", path],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        ready = tmp_path / "var" / "ready"
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)
        assert ready.read_text().strip() == f"https://127.0.0.1:{api}"
        token = (tmp_path / "var" / "admin-token").read_text().strip()
        c = Client([f"https://127.0.0.1:{api}"], token, ca=str(etc / "tls" / "ca.crt"), retry_for=30)
        assert c.request("GET", "/v1/status")["node"] == "solo"
        c.request("PUT", "/v1/jobs/web", {"name": "web", "image": "web:1", "command": ["true"]})
        assert c.request("GET", "/v1/jobs/web")["name"] == "web"
        with urllib.request.urlopen(f"https://127.0.0.1:{api}/healthz", context=c.ssl_context, timeout=5) as r:
            assert json.loads(r.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
