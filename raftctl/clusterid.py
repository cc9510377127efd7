"""The cluster's identity, derived from the cluster secret: the control replicas tell it to their agents
(node/agent_api.py), and the agents name everything they create outside their data dir with it (cgroups:
agent/runtime/base.py). Here, so that neither the node nor the agent imports the other for it."""
from __future__ import annotations

import functools
import hashlib
import re

CLUSTER_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_CLUSTER_SALT = b"raftctl cluster id v1"


@functools.lru_cache(maxsize=4)
def derive_cluster_id(secret: str) -> str:
    """The cluster's identity: 12 hex characters derived from the cluster secret (every replica holds the same
    secret from the cluster's first start; two clusters generate different ones). scrypt, so the id, which
    any local user can read in /proc/*/cgroup, costs a guesser ~50 ms per try of a (weak) secret. Kept per secret:
    a replica derives it once, at its start, beside its event loop (Replica.start)."""
    return hashlib.scrypt(secret.encode(), salt=_CLUSTER_SALT, n=1 << 14, r=8, p=1, dklen=6).hex()
