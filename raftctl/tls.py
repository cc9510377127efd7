"""TLS for the HTTP API: a small CA for a cluster, and the SSL contexts every process uses.

``init_tls(dir, ...)`` makes (or reuses) a CA and issues one server certificate
(shared by the control replicas; its SANs name every replica) and one
certificate per agent, with the ``cryptography`` package. Keys are ECDSA P-256,
written 0600; certificates 0644. Existing files are kept unless ``force``, so a
second run with ``--agent m4`` adds an agent under the same CA.

Layout of DIR::

    ca.crt ca.key                 the cluster CA (keep ca.key off the cluster machines)
    server.crt server.key         every control replica
    agent-<id>.crt agent-<id>.key one per agent machine

``server_context`` serves HTTPS; ``client_context`` verifies a peer against
the CA (or the system trust store when no CA is given). Plain-HTTP peers are
never trusted silently: an unknown CA fails the handshake.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftctl.errors import ValidationError

CA_DAYS = 3650          # ten years: rotating a CA means redistributing it everywhere
LEAF_DAYS = 825         # the longest validity clients such as browsers still accept
DEFAULT_SANS = ("localhost", "127.0.0.1")


@dataclass
class Issued:
    """What ``init_tls`` did: the files it wrote and the ones it kept."""

    directory: str
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def parse_san(value: str) -> x509.GeneralName:
    """``10.0.0.1`` or ``::1`` -> an IP SAN; anything else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.strip().lower()
    if not name or any(ch.isspace() for ch in name) or "/" in name or ":" in name:
        raise ValidationError(f"{value!r} is neither an IP address nor a DNS name", field="san")
    return x509.DNSName(name)


def parse_agent(value: str) -> tuple[str, list[str]]:
    """``m1`` or ``m1=10.0.1.5,m1.example.com`` -> (machine, its SANs)."""
    machine, _, rest = value.partition("=")
    machine = machine.strip()
    if not machine or "/" in machine or machine.startswith("."):
        raise ValidationError(f"{value!r}: the machine id is empty or not a file name", field="--agent")
    sans = [s.strip() for s in rest.split(",") if s.strip()]
    return machine, sans


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have masked bits off; private keys must be exactly 0600
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftctl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(now: datetime.datetime, cluster: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(f"raftctl CA {cluster}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, sans: list[str],
           now: datetime.datetime, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    names: list[x509.GeneralName] = []
    for s in sans:
        n = parse_san(s)
        if n not in names:
            names.append(n)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            # servers and agents are also clients of the control plane
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _load_ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    try:
        with open(crt, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot load the CA in {directory}: {exc}", field="--dir") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ValidationError(f"{key} is not an ECDSA key", field="--dir")
    return cert, private


def init_tls(directory: str, *, server_names: list[str] | None = None, server_ips: list[str] | None = None,
             agents: list[str] | None = None, days: int = LEAF_DAYS, force: bool = False,
             cluster: str = "cluster", now: datetime.datetime | None = None) -> Issued:
    """Make or reuse the CA in ``directory``; issue the server certificate and one per agent."""
    if days < 1:
        raise ValidationError("must be at least 1", field="--days")
    server_sans = list(server_names or []) + list(server_ips or [])
    agent_sans = [parse_agent(v) for v in agents or []]
    for name in server_sans + [s for _, more in agent_sans for s in more]:
        parse_san(name)  # every name checked before anything is written
    now = now or datetime.datetime.now(datetime.timezone.utc)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    out = Issued(directory=os.path.abspath(directory))
    ca_crt, ca_key_path = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    if os.path.exists(ca_crt) and os.path.exists(ca_key_path):
        ca, ca_key = _load_ca(directory)
        out.kept += [ca_crt, ca_key_path]
    else:
        ca, ca_key = _make_ca(now, cluster)
        _write(ca_key_path, _pem_key(ca_key), 0o600)
        _write(ca_crt, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        out.written += [ca_crt, ca_key_path]

    def leaf(stem: str, common_name: str, sans: list[str]) -> None:
        crt, key_path = os.path.join(directory, stem + ".crt"), os.path.join(directory, stem + ".key")
        if not force and os.path.exists(crt) and os.path.exists(key_path):
            out.kept += [crt, key_path]
            return
        cert, key = _issue(ca, ca_key, common_name, sans, now, days)
        _write(key_path, _pem_key(key), 0o600)
        _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        out.written += [crt, key_path]

    leaf("server", "raftctl server", server_sans or list(DEFAULT_SANS))
    for machine, sans in agent_sans:
        leaf(f"agent-{machine}", f"raftctl agent {machine}", [machine] + (sans or list(DEFAULT_SANS)))
    return out


# -- contexts ------------------------------------------------------------------------

def _check_file(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise ValidationError(f"{path}: no such file", field=flag)
    if not os.access(path, os.R_OK):
        raise ValidationError(f"{path}: not readable by this user", field=flag)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """An SSL context that serves ``cert``/``key`` (TLS 1.2 or later)."""
    _check_file(cert, "--tls-cert")
    _check_file(key, "--tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValidationError(f"cannot use {cert} with {key}: {exc.reason or exc}", field="--tls-cert") from None
    return ctx


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """Verifies servers against ``ca`` (a PEM file) or, without one, the system's trust store."""
    if ca is not None:
        _check_file(ca, "--tls-ca")
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def is_verify_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a failed certificate verification."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        nxt = getattr(cur, "reason", None) or getattr(cur, "os_error", None) or getattr(cur, "certificate_error", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return False
