"""`raftctl tls init`: a CA, a server certificate and agent certificates that verify, with private keys 0600."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from raftctl.cli.main import cli
from raftctl.errors import ValidationError
from raftctl.tls import client_context, init_tls, server_context


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def verifier(ca: x509.Certificate, now: datetime.datetime | None = None) -> PolicyBuilder:
    builder = PolicyBuilder().store(Store([ca]))
    return builder.time(now) if now else builder


@pytest.fixture
def tls_dir(tmp_path):
    d = str(tmp_path / "tls")
    result = CliRunner().invoke(cli, ["-o", "json", "tls", "init", "--dir", d, "--server-name", "ctl.example.com",
                                      "--server-ip", "10.0.0.1", "--server-ip", "10.0.0.2", "--agent", "m1",
                                      "--agent", "m2=10.0.1.2,m2.example.com"])
    assert result.exit_code == 0, result.output
    return d, json.loads(result.output)


def test_writes_a_ca_server_and_agent_certificates_with_private_keys_0600(tls_dir):
    d, out = tls_dir
    names = sorted(os.listdir(d))
    assert names == ["agent-m1.crt", "agent-m1.key", "agent-m2.crt", "agent-m2.key", "ca.crt", "ca.key",
                     "server.crt", "server.key"]
    assert sorted(os.path.basename(p) for p in out["written"]) == names
    for name in names:
        mode = stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), (name, oct(mode))


def test_the_server_certificate_names_every_replica_and_chains_to_the_ca(tls_dir):
    d, _ = tls_dir
    ca, server = load(f"{d}/ca.crt"), load(f"{d}/server.crt")
    assert sans(server) == ({"ctl.example.com"}, {"10.0.0.1", "10.0.0.2"})
    v = verifier(ca).build_server_verifier(x509.DNSName("ctl.example.com"))
    chain = v.verify(server, [])
    assert chain[-1] == ca
    verifier(ca).build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.2"))).verify(server, [])
    with pytest.raises(VerificationError):  # a name not in the SANs
        verifier(ca).build_server_verifier(x509.DNSName("other.example.com")).verify(server, [])


def test_agent_certificates_carry_their_machine_and_addresses(tls_dir):
    d, _ = tls_dir
    ca = load(f"{d}/ca.crt")
    assert sans(load(f"{d}/agent-m1.crt")) == ({"m1", "localhost"}, {"127.0.0.1"})
    m2 = load(f"{d}/agent-m2.crt")
    assert sans(m2) == ({"m2", "m2.example.com"}, {"10.0.1.2"})
    verifier(ca).build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.1.2"))).verify(m2, [])


def test_validity_is_bounded_and_the_ca_is_a_ca(tls_dir):
    d, _ = tls_dir
    ca, server = load(f"{d}/ca.crt"), load(f"{d}/server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = server.not_valid_after_utc - server.not_valid_before_utc
    assert datetime.timedelta(days=800) < life < datetime.timedelta(days=830)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > datetime.timedelta(days=3600)
    later = server.not_valid_after_utc + datetime.timedelta(days=1)
    with pytest.raises(VerificationError):  # expired certificates do not verify
        verifier(ca, later).build_server_verifier(x509.DNSName("ctl.example.com")).verify(server, [])


def test_default_sans_are_loopback(tmp_path):
    init_tls(str(tmp_path))
    assert sans(load(f"{tmp_path}/server.crt")) == ({"localhost"}, {"127.0.0.1"})


def test_a_second_run_keeps_the_ca_and_adds_agents_under_it(tls_dir):
    d, _ = tls_dir
    before = {n: open(os.path.join(d, n), "rb").read() for n in ("ca.crt", "ca.key", "server.crt", "agent-m1.crt")}
    issued = init_tls(d, agents=["m3=10.0.1.3"])
    assert sorted(os.path.basename(p) for p in issued.written) == ["agent-m3.crt", "agent-m3.key"]
    for name, data in before.items():
        assert open(os.path.join(d, name), "rb").read() == data, name
    ca = load(f"{d}/ca.crt")
    verifier(ca).build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.1.3"))).verify(
        load(f"{d}/agent-m3.crt"), [])
    init_tls(d, force=True)
    assert open(f"{d}/server.crt", "rb").read() != before["server.crt"]
    assert open(f"{d}/ca.crt", "rb").read() == before["ca.crt"]


def test_a_certificate_from_another_ca_does_not_verify(tmp_path):
    init_tls(str(tmp_path / "a"))
    init_tls(str(tmp_path / "b"))
    with pytest.raises(VerificationError):
        verifier(load(f"{tmp_path}/a/ca.crt")).build_server_verifier(x509.DNSName("localhost")).verify(
            load(f"{tmp_path}/b/server.crt"), [])


def test_the_keys_load_into_ssl_contexts(tls_dir):
    d, _ = tls_dir
    server_context(f"{d}/server.crt", f"{d}/server.key")
    client_context(f"{d}/ca.crt")
    with pytest.raises(ValidationError) as err:  # a key that is not the certificate's
        server_context(f"{d}/server.crt", f"{d}/agent-m1.key")
    assert err.value.field == "--tls-cert"
    with pytest.raises(ValidationError) as err:
        client_context(f"{d}/missing.crt")
    assert err.value.field == "--tls-ca"


@pytest.mark.parametrize("args, message", [
    (["--server-ip", "10.0.0.1/24"], "neither an IP address nor a DNS name"),
    (["--agent", "=10.0.0.1"], "machine id is empty"),
    (["--agent", "../m1"], "not a file name"),
])
def test_bad_names_are_rejected_before_anything_is_issued(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["tls", "init", "--dir", str(tmp_path / "x")] + args)
    assert result.exit_code == 2
    assert message in result.output
    assert not os.path.exists(tmp_path / "x" / "ca.key")
