"""The agent's configuration: identity, fault domain, labels, capacity (defaults from psutil)."""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field

import psutil

from raftctl.clusterid import CLUSTER_ID_RE
from raftctl.errors import ValidationError

LEVELS = ("region", "zone", "rack")


@dataclass
class AgentConfig:
    machine: str
    servers: list[str]
    token: str
    data_dir: str
    address: str = "127.0.0.1"
    fault_domain: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cpu: int = 0          # millicores
    memory: int = 0       # bytes
    pids: int = 4096
    ports: tuple[int, int] = (20000, 32767)
    runtime: str = "process"
    pool: str = ""                # the network its container /24 comes from ("": the cluster's default 10.88.0.0/16)
    heartbeat_s: float = 1.0
    http_port: int = 0          # the agent's log endpoint; 0 = any free port
    tls_cert: str | None = None  # serve the log endpoint over HTTPS with this certificate and key
    tls_key: str | None = None
    tls_ca: str | None = None    # verify https:// control replicas with this CA (default: system trust store)
    image_gc_after_s: float = 600.0  # remove images nothing on this machine used for this long; 0 = never
    disk_reserve: tuple[str, float] = ("percent", 10.0)   # evict the largest writers below this free space (diskguard)
    disk_check_s: float = 10.0       # how often the disk pressure check runs

    api: str = ""

    def registration(self) -> dict:
        return {"machine": self.machine, "address": self.address, "fault_domain": self.fault_domain,
                "labels": self.labels, "resources": {"cpu": self.cpu, "memory": self.memory, "pids": self.pids},
                "ports": list(self.ports), "runtime": self.runtime, "api": self.api,
                **({"pool": self.pool} if self.pool else {})}


def parse_pairs(values: list[str] | tuple[str, ...], flag: str, allowed: tuple[str, ...] | None = None) -> dict[str, str]:
    """`k=v,k2=v2` (repeatable) into a dict, naming the flag on error."""
    out: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            k, v = k.strip(), v.strip()
            if not sep or not k or not v:
                raise ValidationError(f"{part!r} is not key=value", field=flag)
            if allowed and k not in allowed:
                raise ValidationError(f"{k!r} is not one of {', '.join(allowed)}", field=flag)
            out[k] = v
    return out


def default_capacity() -> tuple[int, int]:
    """Millicores and bytes this machine offers: every CPU, physical memory less 10 %."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (psutil.cpu_count() or 1)
    return cpus * 1000, int(psutil.virtual_memory().total * 0.9)


def parse_port_range(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 0 < int(lo) <= int(hi) < 65536:
        raise ValidationError(f"{value!r} is not a port range like 20000-32767", field="--ports")
    return int(lo), int(hi)


# -- the cluster this agent's data dir belongs to ---------------------------------------------------------
IDENTITY_FILE = "identity.json"     # {"cluster": "<12 hex>", "machine": "<id>"} in the agent's data dir


def read_identity(data_dir: str) -> dict[str, str] | None:
    """The cluster (and machine) this data dir was first used for, or None if it has none yet."""
    try:
        with open(os.path.join(data_dir, IDENTITY_FILE)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{IDENTITY_FILE} cannot be read: {exc}", field="--data-dir") from None
    if not isinstance(data, dict) or not CLUSTER_ID_RE.match(str(data.get("cluster", ""))):
        raise ValidationError(f"{os.path.join(data_dir, IDENTITY_FILE)} names no cluster id", field="--data-dir")
    return {"cluster": str(data["cluster"]), "machine": str(data.get("machine", ""))}


def write_identity(data_dir: str, cluster: str, machine: str) -> None:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, IDENTITY_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"cluster": cluster, "machine": machine}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def settle_cluster_id(data_dir: str, machine: str, answered: str | None, *, asked: bool = True) -> str:
    """The cluster id this agent names its per-host things with, kept in ``<data_dir>/identity.json``.

    ``answered``: the id the control plane gave at registration (None: a control plane without a secret,
    ``--insecure-dev``, has none); ``asked=False``: no replica answered, so the kept id is used as it is. A data
    dir first used for another cluster is refused (its containers are that cluster's, not to be adopted)."""
    kept = read_identity(data_dir)
    if answered is not None and not CLUSTER_ID_RE.match(str(answered)):
        raise ValidationError(f"the control plane named cluster {answered!r}, not 12 hex characters",
                              field="cluster")
    if kept and answered and kept["cluster"] != answered:
        raise ValidationError(
            f"{data_dir} belongs to cluster {kept['cluster']}, but the control plane is cluster {answered}: its "
            f"containers are not this cluster's. Use another --data-dir (or stop that cluster's containers and "
            f"remove {IDENTITY_FILE})", field="--data-dir")
    if kept and (not asked or answered is None or kept["machine"] == machine):
        return kept["cluster"]
    if not asked:
        raise ValidationError("no control replica answered and the data dir names no cluster yet", field="--server")
    cluster = answered or secrets.token_hex(6)     # no secret, no shared id: one of this data dir's own
    write_identity(data_dir, cluster, machine)
    return cluster
