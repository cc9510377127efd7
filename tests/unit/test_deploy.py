"""deploy/: the systemd units and the example config files they start from are valid and agree with the CLI."""
from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from raftctl.cli.main import cli
from raftctl.config import load_config

DEPLOY = os.path.join(os.path.dirname(__file__), "..", "..", "deploy")
UNITS = {"server": "raftctl-server.service", "agent": "raftctl-agent.service"}
# options that give a service its own mount namespace: the agent's mounts would vanish with it
MOUNT_NS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadOnlyPaths", "InaccessiblePaths",
            "TemporaryFileSystem", "PrivateMounts", "ProtectKernelModules", "ProtectKernelLogs")


def unit(role: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    with open(os.path.join(DEPLOY, "systemd", UNITS[role])) as f:
        cp.read_file(f)
    return cp


def yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "true", "1", "on")


@pytest.mark.parametrize("role", ["server", "agent"])
def test_exec_start_runs_the_command_from_its_config_file_and_every_flag_exists(role):
    svc = unit(role)["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "raftctl"
    assert argv[1] == role
    args = argv[2:]
    assert args[args.index("--config") + 1] == f"/etc/raftctl/{role}.toml"
    # the same argv, with the example file this repo ships for /etc/raftctl/<role>.toml, parses as click would
    example = os.path.join(DEPLOY, "config", f"{role}.toml")
    args[args.index("--config") + 1] = example
    command = cli.commands[role]
    ctx = command.make_context(role, list(args))
    assert ctx.params["data_dir"].startswith("/var/lib/")
    assert ctx.params["tls_cert"] and ctx.params["tls_key"] and ctx.params["tls_ca"]
    assert load_config(example, command)  # every key known, every type right


@pytest.mark.parametrize("role", ["server", "agent"])
def test_restart_type_and_limits(role):
    svc = unit(role)["Service"]
    assert svc["Type"] in ("simple", "notify", "exec")
    assert svc["Restart"] == "on-failure"
    assert int(svc["LimitNOFILE"]) >= 65536
    assert unit(role)["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit(role)["Unit"]["After"]


def test_the_server_runs_unprivileged_and_hardened():
    svc = unit("server")["Service"]
    assert svc["User"] not in ("", "root", "0")
    assert svc["StateDirectory"] == "raftctl"  # /var/lib/raftctl, owned by User=, matches data_dir
    assert yes(svc["NoNewPrivileges"]) and svc["ProtectSystem"] == "strict" and yes(svc["PrivateTmp"])
    assert svc["CapabilityBoundingSet"] == ""


def test_the_agent_runs_as_root_and_keeps_its_containers_across_restarts():
    svc = unit("agent")["Service"]
    assert svc.get("User", "root") == "root"
    assert svc["KillMode"] == "process"  # a restart must not kill the containers the agent will adopt
    assert yes(svc["Delegate"])
    for key in MOUNT_NS:
        assert not yes(svc.get(key)) and svc.get(key, "no") in ("no", "false", ""), key
    assert not yes(svc.get("NoNewPrivileges"))
    assert "CapabilityBoundingSet" not in svc and "SystemCallFilter" not in svc


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (make system-deps)")
@pytest.mark.parametrize("role", ["server", "agent"])
def test_systemd_analyze_verify_finds_nothing_to_say(role, tmp_path):
    """systemd's own parser: unknown keys, bad values and a missing binary all print a warning."""
    with open(os.path.join(DEPLOY, "systemd", UNITS[role])) as f:
        text = f.read()
    raftctl = os.path.join(os.path.dirname(sys.executable), "raftctl")  # the binary exists here, not in /opt
    path = tmp_path / UNITS[role]
    path.write_text(text.replace("/opt/raftctl/bin/raftctl", raftctl))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("/opt/raftctl/bin/raftctl", raftctl).replace("Restart=", "Restrat="))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert "Unknown key" in proc.stderr  # the check above can fail
