"""A replica that cannot listen on its Raft or API address stops at once and names the flag (pysyncobj alone
would retry the bind forever, silently), and the dev cluster never hands one port to two of its processes."""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from raftctl.cli.main import cli
from raftctl.node.admission import cannot_listen
from raftctl.devcluster import free_port


@pytest.fixture
def held() -> Iterator[str]:
    """host:port of a socket listening for the length of the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_a_port_someone_listens_on_is_refused_with_the_reason(held):
    assert cannot_listen(held) == "Address already in use"


def test_a_free_port_is_fine():
    assert cannot_listen(f"127.0.0.1:{free_port()}") is None


@pytest.mark.parametrize("addr", ["203.0.113.7:7000", "127.0.0.1:notaport"])
def test_an_address_not_on_this_machine_is_refused(addr):
    assert cannot_listen(addr)


def _server(tmp_path, raft: str, api: str):
    return CliRunner().invoke(cli, ["server", "--id", "n1", "--data-dir", str(tmp_path), "--raft", raft,
                                    "--api", api, "--insecure-dev"], prog_name="raftctl")


@pytest.mark.parametrize("which", ["--raft", "--api"])
def test_the_server_stops_naming_the_flag_whose_port_is_taken(tmp_path, held, which):
    other = f"127.0.0.1:{free_port()}"
    r = _server(tmp_path, held, other) if which == "--raft" else _server(tmp_path, other, held)
    assert r.exit_code == 1
    assert f"error: {which}: cannot listen on {held}: Address already in use" in r.output
    assert not (tmp_path / "raft.journal").exists()


def test_raft_and_api_on_one_address_is_refused(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    r = _server(tmp_path, addr, addr)
    assert r.exit_code == 1 and "--api:" in r.output and "also --raft" in r.output


def test_the_dev_cluster_never_hands_out_one_port_twice():
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
