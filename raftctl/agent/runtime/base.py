"""The one interface every runtime driver implements, and the container spec it takes.

Drivers are synchronous (they shell out to runc or touch files); the agent loop calls
them through ``asyncio.to_thread``. A handle is the container id (the placement id).
"""
from __future__ import annotations

import re
import signal as _signal
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from collections.abc import Set
from typing import Any, Callable, Literal, Protocol, TypedDict

from raftctl.agent.images import BlobSource
from raftctl.clusterid import CLUSTER_ID_RE
from raftctl.statemachine.records import JobSpec

State = Literal["created", "running", "exited", "oom_killed", "missing"]
DEFAULT_UID = 65534
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RuntimeError_(Exception):
    """A driver could not do what it was asked (bad id, runc failure, missing image)."""


class ImageNotPushed(RuntimeError_):
    """The driver runs containers in their image's root, and this one's image has no manifest digest."""


class WaitClock(Protocol):
    """The clock a driver's blocking waits read, on its worker thread: monotonic seconds and a blocking sleep
    (``raftctl.clock.Clock`` is the event loop's: its sleep is async)."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemWaitClock:
    """The real one: time.monotonic and time.sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_WAIT: WaitClock = SystemWaitClock()
POLL_S = 0.02   # how often a driver's wait looks again


def wait_until(done: Callable[[], bool], timeout: float, clock: WaitClock = SYSTEM_WAIT, every: float = POLL_S) -> bool:
    """Ask ``done()`` every ``every`` seconds of ``clock`` until it says yes or ``timeout`` seconds have passed;
    its last answer."""
    deadline = clock.monotonic() + timeout
    while clock.monotonic() < deadline:
        if done():
            return True
        clock.sleep(every)
    return done()


# -- per-host names ------------------------------------------------------------------------------
# Placement ids are unique only within one cluster, and several clusters (the dev cluster, a test, a
# benchmark) may run agents on one machine. Every name an agent creates outside its own data dir (cgroups
# today; netns names once bridge mode is wired) therefore carries the cluster's identity and the machine's.
# The cluster id itself (CLUSTER_ID_RE, derive_cluster_id) is in raftctl/clusterid.py: the node derives it.


def check_cluster_id(value: object, field: str = "cluster") -> str:
    if not isinstance(value, str) or not CLUSTER_ID_RE.match(value):
        raise RuntimeError_(f"{field}: {value!r} is not a cluster id (12 lower-case hex characters)")
    return value


def host_scope(cluster: str, machine: str) -> str:
    """The per-host name prefix of one machine of one cluster, e.g. ``raftctl-0123456789ab/m1``."""
    check_cluster_id(cluster)
    if not isinstance(machine, str) or not ID_RE.match(machine):
        raise RuntimeError_(f"machine id {machine!r} is not [A-Za-z0-9][A-Za-z0-9_.-]* (a path component)")
    return f"raftctl-{cluster}/{machine}"


def cgroup_path(cluster: str | None, machine: str | None, id: str) -> str:
    """A container's cgroupsPath: ``/raftctl-<cluster>/<machine>/<placement>`` (v1: under every controller's
    hierarchy; v2: under the unified one). Without a cluster (a driver made by a test), ``/raftctl/<id>``."""
    if not ID_RE.match(id):
        raise RuntimeError_(f"container id {id!r} is not valid")
    if cluster is None:
        return f"/raftctl/{id}"
    return f"/{host_scope(cluster, machine or '')}/{id}"


@dataclass
class Resources:
    cpu: int = 0            # millicores; 0 = no quota
    memory: int = 0         # bytes; 0 = no limit
    pids: int = 0           # 0 = no limit


@dataclass
class ContainerSpec:
    id: str
    job: str
    replica: int
    image: str                          # "sha256:<hex>" digest of the image manifest
    rootfs: str                         # unpacked image root (read-only lower layer)
    command: list[str]
    log_dir: str
    base: str = "scratch"               # "host": host /usr,/lib*,/bin,/sbin,/etc read-only under the image
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None             # "uid[:gid]"; None = 65534:65534
    resources: Resources = field(default_factory=Resources)
    network: str = "host"               # "host" | "bridge"
    ports: dict[str, int] = field(default_factory=dict)
    address: str | None = None          # bridge mode: the container's IP (CIDR) from the machine's subnet
    netns: str | None = None            # bridge mode: path of a prepared network namespace
    version: int = 0
    read_only_root: bool = True         # root mounted ro; /tmp (tmpfs) and /data (private) stay writable
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    capabilities: list[str] = field(default_factory=list)   # "CAP_X" the job asked for; none by default
    egress: str = "masquerade"          # bridge mode: "masquerade" (reaches outside) | "none" (containers only)
    publish: list[list[int]] = field(default_factory=list)  # bridge mode: [host port, container port] to DNAT

    def __post_init__(self) -> None:
        if not ID_RE.match(self.id):
            raise RuntimeError_(f"container id {self.id!r} is not [A-Za-z0-9_.-]{{1,128}}")
        if not self.command:
            raise RuntimeError_("command is empty")
        if self.network not in ("host", "bridge"):
            raise RuntimeError_(f"network {self.network!r} is not host or bridge")
        if self.egress not in ("masquerade", "none"):
            raise RuntimeError_(f"egress {self.egress!r} is not masquerade or none")
        if isinstance(self.resources, dict):
            self.resources = Resources(**self.resources)
        self.env.setdefault("PATH", DEFAULT_PATH)

    @property
    def uid_gid(self) -> tuple[int, int]:
        if self.user is None or self.user == "":
            return DEFAULT_UID, DEFAULT_UID
        uid, _, gid = str(self.user).partition(":")
        return int(uid), int(gid) if gid else int(uid)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContainerSpec":
        d = dict(d)
        d["resources"] = Resources(**d.get("resources", {}))
        return cls(**d)

    @classmethod
    def from_placement(cls, placement: dict[str, Any], spec: JobSpec, *, rootfs: str, log_dir: str,
                       image: str | None = None, netns: str | None = None) -> "ContainerSpec":
        """Build from a placement record and its job version's spec record."""
        env = {"PATH": DEFAULT_PATH}
        env.update(spec.env)
        ports = {str(k): int(v) for k, v in (placement.get("ports") or {}).items()}
        for name, port in ports.items():
            env[port_env(name)] = str(port)
        env["RAFTCTL_JOB"] = str(placement["job"])
        env["RAFTCTL_REPLICA"] = str(placement["replica"])
        env["RAFTCTL_PLACEMENT"] = str(placement["id"])
        network = spec.network
        address = placement.get("address") if network == "bridge" else None
        publish: list[list[int]] = []
        if address:
            env["RAFTCTL_ADDRESS"] = str(address).split("/")[0]
            for named in spec.ports:       # in its own namespace it listens on the port it names, else the host's
                if named.name in ports:
                    inside = named.to if named.to is not None else ports[named.name]
                    env[port_env(named.name)] = str(inside)
                    if named.publish:
                        publish.append([ports[named.name], inside])
        res = spec.resources
        return cls(
            id=str(placement["id"]), job=str(placement["job"]), replica=int(placement["replica"]),
            image=image or spec.image, rootfs=rootfs, base=spec.base,
            command=[expand(a, env) for a in spec.command], env=env, user=spec.user,
            resources=Resources(cpu=res.cpu, memory=res.memory, pids=res.pids),
            network=network, ports=ports, address=address, netns=netns,
            version=int(placement.get("version", 0)), log_dir=log_dir,
            capabilities=sorted(set(spec.capabilities)), egress=spec.egress, publish=publish)


def port_env(name: str) -> str:
    return "PORT_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(arg: str, env: dict[str, str]) -> str:
    """Replace ``${NAME}`` with env values (no shell involved); unknown names stay as they are."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg)


@dataclass
class Observed:
    state: State
    pid: int | None = None
    exit_code: int | None = None
    started_at: float | None = None     # wall-clock seconds
    reason: str | None = None


class Stats(TypedDict):
    cpu_usage_ns: int
    memory_bytes: int
    memory_limit: int
    pids: int
    throttled_ns: int


class Driver(ABC):
    """A container runtime. Every method takes the container id as its handle."""

    name: str = "abstract"
    isolated: bool = False
    rotates_logs: bool = True              # keeps container logs that rotate_logs bounds (the stats pass asks)
    wait_clock: WaitClock = SYSTEM_WAIT    # what the driver's blocking waits (stop's grace, exit records) read

    @abstractmethod
    def prepare_image(self, digest: str) -> str:
        """Make the image ``digest`` available locally; return its unpacked root."""

    @abstractmethod
    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; return its handle (the id)."""

    @abstractmethod
    def start(self, id: str) -> None:
        """Start a created container."""

    @abstractmethod
    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; return the final observation."""

    @abstractmethod
    def kill(self, id: str, sig: int = _signal.SIGKILL) -> None:
        """Send ``sig`` to the container's init process."""

    @abstractmethod
    def status(self, id: str) -> Observed:
        """What the container is doing now; ``missing`` if the driver does not know it."""

    @abstractmethod
    def stats(self, id: str) -> Stats:
        """Resource usage from cgroups (or the best the driver has)."""

    @abstractmethod
    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        """Run ``argv`` inside the container; return (exit code, combined output). 124 on timeout."""

    @abstractmethod
    def list_existing(self) -> list[str]:
        """Ids of every container this driver finds (running or not), for adoption after a restart."""

    @abstractmethod
    def remove(self, id: str) -> None:
        """Delete a stopped container and everything it owns (idempotent)."""

    def spec_of(self, id: str) -> ContainerSpec | None:
        """The spec a container was created with, when the driver kept it."""
        return None

    # -- what the driver needs from the agent (defaults: a driver that runs without image roots) ------
    def use_image_source(self, source: BlobSource) -> None:
        """Where to pull the image blobs this machine lacks (the agent gives its control-plane fetcher).
        A driver given its own source at construction keeps it; one that never pulls ignores this."""

    def image_root(self, image: str, digest: str | None) -> str:
        """The root a container of ``image`` (manifest ``digest``; None: the name was never pushed) runs in,
        pulled and unpacked first; called on a worker thread. "" for a driver that runs commands without an
        image root; ImageNotPushed when the driver needs one and ``digest`` is None."""
        return ""

    def collect_images(self, in_use: Set[str], grace_s: float, now: float) -> list[str]:
        """Image garbage collection: remove the images not in ``in_use`` whose last use (wall-clock seconds, as
        ``now``) is more than ``grace_s`` ago; the images removed. A driver that keeps no images removes nothing."""
        return []

    def rotate_logs(self, id: str) -> None:
        """Rotate the container's log files if they grew past their limit."""

    def writable_paths(self, id: str) -> list[str]:
        """The directories on the agent's disk a container writes to (its /data, its root's writable layer): what
        the agent's disk pressure check (diskguard.py) counts against it. A driver that writes nowhere: none."""
        return []

    def release_network(self) -> None:
        """Remove what the driver made on the host for bridge mode (routes, rules, bridge) when it holds no
        container any more (``raftctl up`` stopping); nothing while containers remain."""

    def configure_network(self, network: dict[str, Any]) -> None:
        """What the control plane says of this machine's network on each assignment answer (``network`` of
        GET /v1/agent/assignments: subnet, gateway, peers): a driver with bridge mode routes to the peers'
        subnets (host-gw). Level-triggered: the whole picture every time. A driver without bridge mode ignores
        it."""

    def exit_fd(self, id: str) -> int | None:
        """A file descriptor that turns readable when the running container's init exits (a pidfd), for the
        supervisor to wait on instead of polling ``status``; the caller closes it. None when the driver cannot
        give one (then the supervisor polls)."""
        return None

    def close(self) -> None:
        """Release driver resources (containers keep running)."""
