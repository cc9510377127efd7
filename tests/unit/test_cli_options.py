"""The CLI's global options (-o, --server, --token, --tls-ca) before or after the subcommand, its output
formats, shell completion and the shape of its imports. A small API on loopback stands in for the cluster."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import click
import pytest
import yaml
from click.testing import CliRunner

from raftctl.cli.main import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI_DIR = os.path.join(ROOT, "raftctl", "cli")
GLOBAL = ("-o", "--server", "--token", "--tls-ca")
DAEMONS = ("server", "agent")  # their own --server/--token/--tls-ca; every flag is a config key

JOBS = {"index": 7, "jobs": [{"name": "web", "status": "running", "version": 3, "replicas": 2,
                              "counts": {"healthy": 2, "running": 2, "pending": 0}}]}
MACHINES = {"index": 7, "machines": [{"id": "m1", "state": "ready", "address": "127.0.0.2", "api": "http://m1:7",
                                      "fault_domain": {"region": "r", "zone": "z1", "rack": "k"},
                                      "allocated": {"cpu": 500, "memory": 2**20},
                                      "resources": {"cpu": 2000, "memory": 2**30}, "placements": 1}]}

EVENTS = {"index": 9, "events": [{"seq": 1, "at": 1_700_000_000_000, "kind": "job.version", "job": "web",
                                  "message": "job web version 3 submitted"},
                                 {"seq": 2, "at": 1_700_000_001_000, "kind": "deploy", "job": "web",
                                  "message": "deploy of web version 3 started: 2 to replace"}]}


class FakeApi(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        FakeApi.seen.append((self.path, self.headers.get("Authorization")))
        body = {"/v1/jobs": JOBS, "/v1/machines": MACHINES, "/v1/events": EVENTS}.get(self.path.split("?")[0])
        data = json.dumps(body if body is not None else {"code": "not_found", "message": "no"}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


DEAD = "http://127.0.0.1:9"  # discard port on loopback: nothing answers


def run(args: list[str], **env: str) -> Any:
    clean = {"RAFTCTL_SERVER": None, "RAFTCTL_TOKEN": None, "RAFTCTL_CA_CERT": None, "RAFTCTL_RETRY_FOR": "0.5"}
    FakeApi.seen.clear()
    return CliRunner().invoke(cli, args, env={**clean, **env}, prog_name="raftctl")


# -o before or after the subcommand, the later one winning

@pytest.mark.parametrize("args", [
    ["-o", "json", "job", "list"],
    ["job", "list", "-o", "json"],
    ["job", "list", "--output=json"],
    ["job", "-o", "json", "list"],
    ["-o", "table", "job", "list", "-o", "json"],
    ["-o", "yaml", "job", "-o", "table", "list", "-o", "json"],
])
def test_dash_o_json_anywhere(api, args):
    r = run(args, RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == JOBS


@pytest.mark.parametrize("args", [["-o", "json", "job", "list", "-o", "table"], ["job", "list"],
                                  ["job", "list", "-o", "table"]])
def test_table_when_table_comes_last_or_nothing_is_said(api, args):
    r = run(args, RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    head, row = r.output.splitlines()
    assert head.split() == ["NAME", "STATUS", "VERSION", "HEALTHY", "RUNNING", "PENDING"]
    assert row.split() == ["web", "running", "3", "2/2", "2", "0"]


@pytest.mark.parametrize("args", [["-o", "yaml", "job", "list"], ["job", "list", "-o", "yaml"]])
def test_dash_o_yaml_prints_yaml(api, args):
    r = run(args, RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    assert not r.output.lstrip().startswith("{")  # block style, not JSON (which YAML would also read)
    assert yaml.safe_load(r.output) == JOBS


@pytest.mark.parametrize("args", [["-o", "wide", "machine", "list"], ["machine", "list", "-o", "wide"]])
def test_dash_o_wide_after_the_subcommand_adds_the_endpoint(api, args):
    r = run(args, RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    head, row = r.output.splitlines()
    assert head.split()[-1] == "ENDPOINT" and row.split()[-1] == "http://m1:7"


def test_a_bad_output_after_the_subcommand_is_a_usage_error_naming_it(api):
    r = run(["job", "list", "-o", "xml"], RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 2 and "-o" in r.output and "xml" in r.output
    assert FakeApi.seen == []


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_stream_is_one_json_line_or_one_yaml_document_per_item(api, fmt):
    r = run(["events", "-o", fmt], RAFTCTL_SERVER=api, RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    items = ([json.loads(line) for line in r.output.splitlines()] if fmt == "json"
             else list(yaml.safe_load_all(r.output)))
    assert items == EVENTS["events"]
    if fmt == "yaml":
        assert r.output.count("---\n") == 2

# --server and --token before or after the subcommand

@pytest.mark.parametrize("where", ["before", "after", "group"])
def test_server_and_token_anywhere(api, where):
    flags = ["--server", api, "--token", "tok-2"]
    args = {"before": [*flags, "job", "list"], "after": ["job", "list", *flags],
            "group": ["job", *flags, "list"]}[where]
    r = run([*args, "-o", "json"])
    assert r.exit_code == 0, r.output
    assert FakeApi.seen == [("/v1/jobs", "Bearer tok-2")]


def test_a_flag_after_the_subcommand_beats_the_one_before_and_the_environment(api):
    r = run(["--token", "before", "job", "list", "--token", "after", "-o", "json"], RAFTCTL_SERVER=api,
            RAFTCTL_TOKEN="env")
    assert r.exit_code == 0, r.output
    assert FakeApi.seen == [("/v1/jobs", "Bearer after")]
    r = run(["job", "list", "-o", "json"], RAFTCTL_SERVER=api, RAFTCTL_TOKEN="env")
    assert FakeApi.seen == [("/v1/jobs", "Bearer env")]  # the environment still counts when nothing is given


def test_the_later_server_replaces_the_earlier_one(api):
    # the earlier one answers, the later one does not: only the later is asked
    r = run(["--server", api, "job", "list", "--server", DEAD], RAFTCTL_TOKEN="t")
    assert r.exit_code == 1 and "no replica answered" in r.output and "127.0.0.1:9" in r.output
    assert api.split("//")[1] not in r.output and FakeApi.seen == []
    r = run(["--server", DEAD, "job", "list", "--server", api, "-o", "json"], RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output


def test_several_servers_after_the_subcommand_fail_over(api):
    r = run(["job", "list", "--server", f"{DEAD},{api}", "-o", "json"], RAFTCTL_TOKEN="t")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == JOBS


def test_tls_ca_after_the_subcommand_reaches_the_client(tmp_path):
    # an https:// server with a CA file that does not exist: the client names the file, so it was passed on
    missing = str(tmp_path / "no-ca.crt")
    r = run(["job", "list", "--server", "https://127.0.0.1:9", "--tls-ca", missing], RAFTCTL_TOKEN="t")
    assert r.exit_code != 0 and "no-ca.crt" in r.output


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _leaves(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _opts(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", ())}


def test_every_command_but_the_daemons_takes_every_global_option_after_it():
    assert set(GLOBAL) <= _opts(cli)
    leaves = dict(_leaves(cli))
    assert len(leaves) >= 30
    for path, cmd in leaves.items():
        if path[0] in DAEMONS:
            continue
        assert set(GLOBAL) <= _opts(cmd), " ".join(path)
        ctx = cmd.make_context(path[-1], ["-o", "yaml", "--token", "x"], resilient_parsing=True)
        assert ctx.find_root().obj["output"] == "yaml" and ctx.find_root().obj["token"] == "x"
    for group in (c for c in cli.commands.values() if isinstance(c, click.Group)):
        assert set(GLOBAL) <= _opts(group), group.name


def test_the_daemons_keep_their_own_server_token_and_ca_flags():
    agent, server = cli.commands["agent"], cli.commands["server"]
    assert "-o" not in _opts(agent) and "-o" not in _opts(server) and "--token" not in _opts(server)
    servers = next(p for p in agent.params if "--server" in getattr(p, "opts", ()))
    token = next(p for p in agent.params if "--token" in getattr(p, "opts", ()))
    assert servers.name == "servers" and servers.required and token.envvar == "RAFTCTL_AGENT_TOKEN"


# shell completion

@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                          ("fish", "complete --no-files --command raftctl")])
def test_completion_prints_the_script(shell, marker):
    r = run(["completion", shell])
    assert r.exit_code == 0, r.output
    assert "_RAFTCTL_COMPLETE" in r.output and marker in r.output and "raftctl" in r.output


def test_completion_refuses_other_shells():
    r = run(["completion", "tcsh"])
    assert r.exit_code == 2 and "tcsh" in r.output


def complete(words: str) -> list[str]:
    """What the bash script gets back from `raftctl` for the words typed so far (the real entry point)."""
    env = {**os.environ, "_RAFTCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    p = subprocess.run([sys.executable, "-c", "from raftctl.cli.main import main; main()"], capture_output=True,
                       text=True, env=env, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return [line.split(",", 1)[1] for line in p.stdout.splitlines()]


def test_the_completion_script_is_answered():
    assert complete("raftctl jo") == ["job"]
    assert {"list", "run", "status"} <= set(complete("raftctl job "))
    assert complete("raftctl job list -o ") == ["table", "wide", "json", "yaml"]
    assert complete("raftctl completion ") == ["bash", "zsh", "fish"]



def test_bash_completes_through_the_printed_script(tmp_path):
    """The script `raftctl completion bash` prints, sourced in bash, completes by calling raftctl back."""
    shim = tmp_path / "raftctl"  # raftctl on PATH, whatever the install
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from raftctl.cli.main import main; main()' \"$@\"\n")
    shim.chmod(0o755)
    script = run(["completion", "bash"]).output
    probe = script + """
COMP_WORDS=(raftctl job list -o y); COMP_CWORD=4; _raftctl_completion raftctl; echo "1:${COMPREPLY[*]}"
COMPREPLY=(); COMP_WORDS=(raftctl mach); COMP_CWORD=1; _raftctl_completion raftctl; echo "2:${COMPREPLY[*]}"
complete -p raftctl
"""
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["1:yaml", "2:machine", "complete -o nosort -F _raftctl_completion raftctl"]

# the modules' imports: no cycle, main imported by nobody

def _cli_imports(path: str) -> set[str]:
    """Every raftctl.cli module ``path`` imports, at module level or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "raftctl.cli":
                out.update(f"raftctl.cli.{a.name}" for a in node.names)
            elif node.module.startswith("raftctl.cli."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("raftctl.cli."))
    return out


def test_cli_modules_import_no_cycle_and_none_imports_main():
    graph = {f"raftctl.cli.{f[:-3]}": _cli_imports(os.path.join(CLI_DIR, f))
             for f in os.listdir(CLI_DIR) if f.endswith(".py")}
    assert len(graph) >= 15
    assert [m for m, deps in graph.items() if "raftctl.cli.main" in deps] == []
    assert graph["raftctl.cli.base"] == set()  # the root: every command module imports it, it imports none
    state: dict[str, str] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != "open", f"import cycle: {' -> '.join([*stack, m, d])}"
            if d not in state:
                visit(d, [*stack, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_cli_speaks_http_to_the_control_plane_only_through_the_client():
    """No command module opens connections itself; logs.py reads an agent's own endpoint (not the control
    plane), through the client's urlopen (its TLS settings)."""
    net = ("urllib", "http", "socket", "aiohttp", "ssl")
    found = {}
    for f in sorted(os.listdir(CLI_DIR)):
        if not f.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(CLI_DIR, f)).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                if n.split(".")[0] in net and n != "urllib.parse":  # quoting a path is no traffic
                    found.setdefault(f, set()).add(n)
    assert found == {"logs.py": {"urllib.request"}}


def test_a_secret_file_is_read_stripped_and_a_bad_one_names_its_flag(tmp_path, capsys) -> None:
    from raftctl.cli.output import read_secret

    good = tmp_path / "token"
    good.write_text("  s3cret\n")
    assert read_secret(None, str(good), "--token-file") == "s3cret"
    assert read_secret("given", None, "--token-file") == "given"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, says in ((empty, "is empty"), (tmp_path / "absent", "cannot read")):
        with pytest.raises(SystemExit):
            read_secret(None, str(path), "--token-file")
        err = capsys.readouterr().err
        assert err.startswith("error: --token-file: ") and says in err
