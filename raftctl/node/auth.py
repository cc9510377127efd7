"""Bearer tokens and roles. Only sha256 hashes of tokens are replicated."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets

from raftctl.errors import Forbidden, Unauthorized

# What each role may do. Routes name one permission.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "jobs:write", "machines:write", "tokens", "members", "agent", "images:write",
                        "metrics:write", "snapshot"}),
    "deployer": frozenset({"read", "jobs:write", "images:write", "metrics:write"}),
    "operator": frozenset({"read", "machines:write"}),
    "reader": frozenset({"read"}),
    "agent": frozenset({"agent", "read", "metrics:write"}),
}
ROLES_FOR: dict[str, list[str]] = {
    perm: [r for r, perms in PERMISSIONS.items() if perm in perms] for perm in
    {p for perms in PERMISSIONS.values() for p in perms}
}
WHAT: dict[str, str] = {
    "read": "read cluster state", "jobs:write": "write jobs", "machines:write": "change machines",
    "tokens": "manage tokens", "members": "change cluster membership", "agent": "act as an agent",
    "images:write": "push images", "metrics:write": "push metrics", "snapshot": "take a snapshot of the state",
}


def new_token() -> str:
    return "rct_" + secrets.token_urlsafe(32)


_PROCESS_KEY = secrets.token_bytes(32)  # without a cluster secret (insecure dev): this process only


def request_token(secret: str | None, request_id: str, role: str, name: str, machine: str) -> str:
    """The token a create request with ``request_id`` mints: HMAC of the request under the cluster
    secret, so a retry of the same request (on any replica, after a lost answer) prints the same,
    working token. Without a cluster secret the key is this process's own: a retry that reaches
    another leader gets a different hash and is refused as a request id conflict (no dead token)."""
    key = secret.encode() if secret else _PROCESS_KEY
    msg = b"raftctl token v1\0" + json.dumps([request_id, role, name, machine]).encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return "rct_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("this call needs a bearer token: pass --token or set RAFTCTL_TOKEN "
                           "(the bootstrap admin token is in the server's data dir, file admin-token)")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def authorize(tokens: dict[str, dict], header: str | None, perm: str) -> dict:
    """The token record allowed ``perm``; raise 401/403 with a message a person understands."""
    record = tokens.get(token_hash(bearer(header)))
    if record is None:
        raise Unauthorized("unknown or revoked token: create one with `raftctl token create` "
                           "using an admin token")
    if perm not in PERMISSIONS.get(record["role"], frozenset()):
        allowed = " or ".join(ROLES_FOR.get(perm, ["admin"]))
        raise Forbidden(f"token {record['name']!r} has role {record['role']}, which cannot "
                        f"{WHAT.get(perm, perm)} (needs {allowed})")
    return record


def write_secret_file(path: str, value: str) -> None:
    """Create ``path`` with mode 0600 holding ``value`` (never widening an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
