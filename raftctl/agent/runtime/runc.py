"""The runc driver: an OCI bundle per container, driven through Debian's runc.

Per container, under ``<data_dir>/containers/<id>/``: ``config.json``, ``spec.json``
(the ContainerSpec, for adoption), ``rootfs/`` (btrfs snapshot or overlay mount of the
unpacked image, with ``upper/`` + ``work/``), ``data/`` (the private writable /data),
``shim.json`` (what the shim runs: ``runc run --detach``; written by create, handed to a shim by start),
``init.pid``, ``started_at``, ``owner.json`` (the cluster and machine that created it) and, once the
container has exited, ``exit.json`` written by its shim (see shim.py). runc keeps its own state under
``<data_dir>/runc``. The one name outside the data dir, the container's cgroup, is
``/raftctl-<cluster>/<machine>/<placement>`` (base.cgroup_path), so clusters sharing a machine never share one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, AbstractSet, Any, Iterator

from raftctl.agent import nft, rootfs
from raftctl.agent.netnames import RUN_DIR, Names
from raftctl.agent.images import BlobSource, ImageStore
from raftctl.agent.runtime import bundle as oci_bundle
from raftctl.agent.runtime import cgroups, logs
from raftctl.agent.runtime.base import (ID_RE, ContainerSpec, Driver, ImageNotPushed, Observed, RuntimeError_, Stats,
                                        WaitClock, cgroup_path, host_scope, wait_until)

if TYPE_CHECKING:
    from raftctl.agent.runtime.bridge import BridgeNet

log = logging.getLogger("raftctl.agent.runc")
TERM_AGAIN_S = 1.0     # a stop sends SIGTERM again this often during its grace (see stop)
INIT_EXEC_WAIT_S = 2.0  # a stop waits at most this long for runc init to exec the command (see _wait_init_exec)
SWEEP_EVERY_S = 30.0   # network leftovers of vanished containers are looked for at most this often
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")
SHIM_CFG = "shim.json"   # the shim's config, written by create; its shim.pid says it was handed to a shim (start)
SCOPE_LOCKS = "/run/raftctl"   # <cluster>.lock: creates hold it shared, pruning an empty cluster cgroup exclusively


def find_init() -> str | None:
    """A static init (Debian's tini-static: no host libraries, so it runs in `base: scratch` images too)
    to run as each container's PID 1, or None (then the command itself is PID 1)."""
    return shutil.which("tini-static")


def runc_available(runc: str = "runc") -> bool:
    return os.geteuid() == 0 and shutil.which(runc) is not None


class RuncDriver(Driver):
    name = "runc"
    isolated = True

    def __init__(self, data_dir: str, images: ImageStore | None = None, *, runc: str = "runc",
                 cgroup_parent: str = "raftctl", python: str = sys.executable,
                 image_source: BlobSource | None = None, private_paths: list[str] | tuple[str, ...] = (),
                 cluster: str | None = None, machine: str | None = None,
                 wait_clock: WaitClock | None = None, netns_dir: str = RUN_DIR) -> None:
        """``private_paths``: the agent's own secrets (its data dir, token file, TLS key): a container may never
        see them, so a `base: host` container whose host mounts would hold one is refused.
        ``cluster``/``machine``: the identity every per-host name carries (the agent always gives both); a
        container another cluster created in this data dir is never listed, so never adopted or removed.
        ``wait_clock``: what the blocking waits read (a test's fake clock; default the real one).
        ``netns_dir``: where bridge containers' network namespaces are bind-mounted (``ip netns`` reads /run/netns)."""
        if cluster is not None:
            host_scope(cluster, machine or "")          # both valid, or refuse to start
        path = shutil.which(runc)
        if path is None:
            raise RuntimeError_(f"{runc} is not installed (apt-get install runc)")
        if os.geteuid() != 0:
            raise RuntimeError_("the runc driver needs root")
        self.runc = path
        if wait_clock is not None:
            self.wait_clock = wait_clock
        self.data_dir = os.path.abspath(data_dir)
        self.private_paths = sorted({os.path.realpath(p) for p in (self.data_dir, *private_paths) if p})
        self.containers_dir = os.path.join(self.data_dir, "containers")
        self.runc_root = os.path.join(self.data_dir, "runc")
        os.makedirs(self.containers_dir, exist_ok=True)
        os.makedirs(self.runc_root, exist_ok=True)
        self.images = images or ImageStore(os.path.join(self.data_dir, "images"))
        self.image_source = image_source      # where missing blobs are pulled from (the control plane)
        self.cgroup_parent = cgroup_parent.strip("/")
        self.cluster, self.machine = cluster, machine
        self._cgroup_paths: dict[str, str] = {}
        self._foreign: set[str] = set()                # other clusters' containers seen (warned once)
        self.python = python
        self.memsw = cgroups.memsw_available()
        self.shims = ShimPool(python, os.path.join(self.data_dir, "shim.err"))
        self.net_names = Names(cluster, machine, netns_dir)
        self._bridge: BridgeNet | None = None
        self._swept_at: float | None = None
        self.init = find_init()
        if self.init is None:
            log.warning("tini-static not found (apt-get install tini): each container's command runs as PID 1, "
                        "so one without a SIGTERM handler is stopped only by SIGKILL after its grace period")

    # -- helpers ------------------------------------------------------------------------------
    def _argv(self, *args: str) -> list[str]:
        return [self.runc, "--root", self.runc_root, *args]

    def _run(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self._argv(*args), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError_(f"runc {args[0]} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    def bundle(self, id: str) -> str:
        if not ID_RE.match(id):
            raise RuntimeError_(f"container id {id!r} is not valid")
        return os.path.join(self.containers_dir, id)

    def bridge_net(self) -> "BridgeNet":
        """The bridge-mode network code, loaded on first use (pyroute2 costs ~0.5 s to import)."""
        if self._bridge is None:
            from raftctl.agent.runtime.bridge import BridgeNet
            self._bridge = BridgeNet(self.data_dir, self.cluster, self.machine, self.net_names.run_dir)
        return self._bridge

    def _bridge_specs(self, ids: AbstractSet[str] | None = None) -> list[ContainerSpec]:
        """The specs of this driver's bridge containers (those with a bundle and a spec.json)."""
        out = []
        for id in sorted(ids if ids is not None else os.listdir(self.containers_dir)):
            if not ID_RE.match(id):
                continue
            try:
                spec = self.spec_of(id)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("spec.json of %s unreadable: %s", id, exc)
                continue
            if spec is not None and spec.network == "bridge" and spec.address:
                out.append(spec)
        return out

    def _sync_bridge(self, ids: AbstractSet[str] | None = None, force: bool = True) -> None:
        """The agent's nftables table for exactly the bridge containers it has now (none: no table, no bridge);
        ``force`` False: no nft call when it would not change (starts and removes; sweeps force it)."""
        net = self.bridge_net()
        net.sync((nft.Endpoint(id=s.id, address=str(s.address).split("/")[0], egress=s.egress,
                               publish=tuple((int(h), int(c)) for h, c in s.publish))
                  for s in self._bridge_specs(ids)), force=force)

    def configure_network(self, network: dict[str, Any]) -> None:
        if not isinstance(network, dict) or not (network.get("subnet") or network.get("peers")
                                                 or self._bridge is not None):
            return
        net = self.bridge_net()
        if net.configure(network) and self._bridge_specs():
            self._sync_bridge()

    def release_network(self) -> None:
        if self.list_existing():
            return
        self._prune_scope()             # the agent leaving with no container: its cgroup scope goes too
        if self._bridge is not None or os.path.exists(os.path.join(self.data_dir, "routes.json")):
            self.bridge_net().release()

    def cgroups_path(self, id: str) -> str:
        """The cgroup a new container ``id`` gets."""
        if self.cluster is None and self.cgroup_parent != "raftctl":
            return f"/{self.cgroup_parent}/{id}"
        return cgroup_path(self.cluster, self.machine, id)

    def cgroup(self, id: str) -> cgroups.Cgroup:
        """The container's cgroup: the path its config.json gave runc (a container created under another naming,
        e.g. before an upgrade, keeps its own), else the path a new one gets."""
        path = self._cgroup_paths.get(id)
        if path is None:
            try:
                with open(os.path.join(self.bundle(id), "config.json")) as f:
                    path = str(json.load(f)["linux"]["cgroupsPath"])
                self._cgroup_paths[id] = path
            except (OSError, ValueError, KeyError, TypeError):
                path = self.cgroups_path(id)
        return cgroups.Cgroup.of(path)

    def owner(self, id: str) -> str | None:
        """The cluster that created container ``id`` here (None: made before clusters were named)."""
        text = self._read(id, "owner.json")
        try:
            return str(json.loads(text)["cluster"]) if text else None
        except (ValueError, KeyError, TypeError):
            return "?"                                   # unreadable: not provably ours

    def _read(self, id: str, name: str) -> str | None:
        try:
            with open(os.path.join(self.bundle(id), name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _exit_info(self, id: str) -> dict[str, Any] | None:
        text = self._read(id, "exit.json")
        return json.loads(text) if text else None

    # -- images -------------------------------------------------------------------------------
    def use_image_source(self, source: BlobSource) -> None:
        if self.image_source is None:
            self.image_source = source

    def image_root(self, image: str, digest: str | None) -> str:
        if digest is None:
            raise ImageNotPushed(f"image {image} is not pushed")
        return self.prepare_image(digest)

    def collect_images(self, in_use: AbstractSet[str], grace_s: float, now: float) -> list[str]:
        return self.images.gc(in_use, now, grace_s)

    def prepare_image(self, digest: str) -> str:
        """The unpacked root of ``digest`` (or a local name), pulling the blobs it lacks first."""
        digest = self.images.resolve(digest)
        if self.image_source is not None and not os.path.isdir(self.images.unpacked_path(digest)):
            self.images.pull(digest, self.image_source)
        return self.images.unpack(digest)

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self, spec: ContainerSpec) -> str:
        b = self.bundle(spec.id)
        if os.path.exists(b):
            raise RuntimeError_(f"container {spec.id} already exists")
        if not os.path.isdir(spec.rootfs):
            raise RuntimeError_(f"image root {spec.rootfs} is missing (prepare_image first)")
        os.makedirs(b)
        try:
            with self._scope_lock(exclusive=False):         # no prune of our cgroup parents while runc makes them
                return self._create(spec, b)
        except BaseException:
            self.remove(spec.id)
            raise

    @contextlib.contextmanager
    def _scope_lock(self, exclusive: bool) -> Iterator[bool]:
        """A flock on ``/run/raftctl/<cluster>.lock``, shared by every agent of this cluster on this host; yields
        whether it is held (an exclusive one is only tried, never waited for)."""
        if self.cluster is None:
            yield not exclusive
            return
        os.makedirs(SCOPE_LOCKS, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(SCOPE_LOCKS, f"{self.cluster}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _prune_turn(self) -> Iterator[None]:
        """A blocking flock on ``/run/raftctl/<cluster>.prune``: the prunes of one cluster's agents on this host take
        turns (each holds it for a few rmdirs)."""
        assert self.cluster is not None
        os.makedirs(SCOPE_LOCKS, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(SCOPE_LOCKS, f"{self.cluster}.prune"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _prune_scope(self) -> None:
        """Remove ``/raftctl-<cluster>/<machine>`` and ``/raftctl-<cluster>`` once empty (the kernel refuses while
        a container's cgroup is under them), unless a create of this cluster is making them right now. Prunes take
        turns: two machines of the cluster whose last containers go at once both prune (the second used to find
        the first one's exclusive lock, skip, and leave its machine's scope and the cluster's behind)."""
        if self.cluster is None or not self.machine:
            return
        with self._prune_turn(), self._scope_lock(exclusive=True) as held:
            if held:
                scope = host_scope(self.cluster, self.machine)
                cgroups.remove_if_empty(scope)
                cgroups.remove_if_empty(scope.split("/")[0])

    def _create(self, spec: ContainerSpec, b: str) -> str:
        if self.cluster is not None:
            with open(os.path.join(b, "owner.json"), "w") as f:
                json.dump({"cluster": self.cluster, "machine": self.machine}, f)
        with open(os.path.join(b, "spec.json"), "w") as f:
            json.dump(spec.to_dict(), f, sort_keys=True)
        rootfs.make_root(spec.rootfs, b)
        root = os.path.join(b, "rootfs")
        netns = spec.netns
        if spec.network == "bridge" and netns is None:
            if not spec.address:
                raise RuntimeError_(f"container {spec.id}: network bridge without an address")
            netns = self.bridge_net().attach(spec.id, str(spec.address))
            self._sync_bridge(force=False)    # its published ports and egress before it runs
        uid, gid = spec.uid_gid
        host_binds, files = self._host_base(root, b, uid, gid) if spec.base == "host" else ([], {})
        data_dir = None
        if spec.read_only_root:
            data_dir = os.path.join(b, "data")
            os.makedirs(data_dir, exist_ok=True)
            os.chown(data_dir, uid, gid)
            os.chmod(data_dir, 0o750)
        streams = logs.prepare(spec.log_dir)
        path = self.cgroups_path(spec.id)
        cfg = oci_bundle.config(spec, cgroups_path=path, data_dir=data_dir,
                                host_binds=host_binds, memsw=self.memsw, netns=netns,
                                init=self.init, files=files)
        self._cgroup_paths[spec.id] = path   # what cgroup() would read back from config.json
        cg = self.cgroup(spec.id)
        cpu_limit = self._cpu_limit_later(cfg, cg)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        shim_cfg = {
            "mode": "runc", "state_dir": b, "stdout": streams["stdout"], "stderr": streams["stderr"],
            "pid_file": os.path.join(b, "init.pid"),
            "memory_cgroup": cg.memory_dir(),
            "argv": self._argv("--log", os.path.join(b, "runc.log"), "run", "--detach", "--bundle", b,
                               "--pid-file", os.path.join(b, "init.pid"), spec.id),
            "cpu_limit": cpu_limit,
        }
        with open(os.path.join(b, SHIM_CFG), "w") as f:
            json.dump(shim_cfg, f)
        log.info("created %s (bundle ready, job %s replica %d)", spec.id, spec.job, spec.replica)
        return spec.id

    @staticmethod
    def _cpu_limit_later(cfg: dict[str, Any], cg: cgroups.Cgroup) -> dict[str, str] | None:
        """Take the CPU quota out of ``cfg`` and say where in ``cg`` the shim writes it once ``runc run`` has handed
        over to the command ({file, value}; None without a quota). runc applies config.json's quota before its own init
        has finished (11-16 ms of CPU per start), and a small quota then throttled the command's first
        milliseconds: 18 of 20 end-to-end starts at 50m, each held back 30-80 ms (docs/security.md)."""
        cpu = cfg["linux"].get("resources", {}).get("cpu", {})
        quota = cpu.pop("quota", None)
        if quota is None:
            return None
        if cg.v2:
            return {"file": os.path.join(cg.dir(""), "cpu.max"), "value": f"{quota} {cpu['period']}"}
        return {"file": os.path.join(cg.dir("cpu"), "cpu.cfs_quota_us"), "value": str(quota)}

    def _host_base(self, root: str, b: str, uid: int, gid: int) -> tuple[list[str], dict[str, str]]:
        """`base: host`: the host dirs to bind read-only under the image (host symlinks, as with usrmerge, are
        copied as symlinks), and the few /etc files programs need (container path -> host path), with a
        generated passwd and group. Refuses when a bound tree would show one of the agent's private paths."""
        binds = []
        for path in oci_bundle.HOST_BASE_DIRS:
            inside = os.path.join(root, path.lstrip("/"))
            if os.path.islink(path):
                if not os.path.lexists(inside):
                    os.symlink(os.readlink(path), inside)
            elif os.path.isdir(path):
                if os.path.islink(inside):
                    continue            # the image chose its own link; leave it
                os.makedirs(inside, exist_ok=True)
                binds.append(path)
        files: dict[str, str] = {}
        if not os.path.islink(os.path.join(root, "etc")):       # an image with its own /etc link keeps it
            for name in oci_bundle.HOST_ETC:
                host = os.path.realpath(os.path.join("/etc", name))
                if os.path.exists(host):
                    files["/etc/" + name] = host
            passwd, group = oci_bundle.passwd_group(uid, gid)
            for name, text in (("passwd", passwd), ("group", group)):
                path = os.path.join(b, "etc-" + name)
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, 0o644)
                files["/etc/" + name] = path
        generated = {files["/etc/passwd"], files["/etc/group"]} if "/etc/passwd" in files else set()
        for source in [os.path.realpath(p) for p in binds] + [p for p in files.values() if p not in generated]:
            for private in self.private_paths:
                if private == source or private.startswith(source.rstrip("/") + "/"):
                    raise RuntimeError_(f"base: host would show {private} (private to the agent) inside the "
                                        f"container through {source}: move the agent's data dir, token and keys "
                                        "out of /usr, /lib*, /bin, /sbin")
        return binds, files

    def _runc_log_tail(self, id: str) -> str:
        text = self._read(id, "runc.log") or ""
        msgs = []
        for line in text.splitlines()[-5:]:
            try:
                msgs.append(json.loads(line).get("msg", line))
            except ValueError:
                msgs.append(line)
        return "; ".join(msgs) or "no runc log"

    def start(self, id: str) -> None:
        """Hand the created bundle to a shim, which runs it with one `runc run --detach` (one runc process where
        `runc create` + `runc start` were two: a Go runtime start-up less on every start) and stays its parent."""
        b = self.bundle(id)
        if not self._waiting(id):
            raise RuntimeError_(f"container {id} is not a created one waiting for its start")
        pid = self.shims.run(b)
        if isinstance(pid, str):   # the shim's own word (a CPU quota it could not write) before runc's log
            raise RuntimeError_(f"runc run {id} failed: {pid}: {self._runc_log_tail(id)}")
        stat = proc_stat(pid)
        if stat:
            with open(os.path.join(b, "init.start"), "w") as f:
                f.write(stat[1])
        with open(os.path.join(b, "started_at"), "w") as f:
            f.write(repr(time.time()))
        log.info("started %s (init pid %d)", id, pid)

    def _waiting(self, id: str) -> bool:
        """Created and not yet handed to a shim: no runc container and no process exist for it yet."""
        b = self.bundle(id)
        return os.path.exists(os.path.join(b, SHIM_CFG)) and not os.path.exists(os.path.join(b, "shim.pid"))

    def _live_init(self, id: str) -> int | None:
        """The pid of the container's init if it is alive, not a zombie, and has the start time recorded when it
        started (so a reused pid is not mistaken for the container)."""
        pid_text, start_text = self._read(id, "init.pid"), self._read(id, "init.start")
        if not pid_text or not start_text:
            return None
        pid = int(pid_text)
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] != start_text.strip():
            return None
        return pid

    def _fast_running(self, id: str, started_at: float | None) -> Observed | None:
        """Running without asking runc: its init is live (``_live_init``)."""
        pid = self._live_init(id) if started_at is not None else None
        return Observed("running", pid=pid, started_at=started_at) if pid is not None else None

    def exit_fd(self, id: str) -> int | None:
        """A pidfd of the container's init, checked to be the init this driver started (``_live_init`` again after
        the pidfd was opened: a reused pid is never watched)."""
        pid = self._live_init(id)
        if pid is None or not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if self._live_init(id) != pid:
            os.close(fd)
            return None
        return fd

    def kill(self, id: str, sig: int = signal.SIGKILL) -> None:
        if self._waiting(id):
            return                                              # nothing runs yet
        r = self._run("kill", id, str(int(sig)), check=False)
        if r.returncode != 0 and "not running" not in r.stderr and "process already finished" not in r.stderr:
            raise RuntimeError_(f"runc kill {id} failed: {r.stderr.strip()}")

    def _wait_exit(self, id: str, timeout: float) -> bool:
        path = os.path.join(self.bundle(id), "exit.json")
        return wait_until(lambda: os.path.exists(path), timeout, self.wait_clock)

    def _wait_init_exec(self, pid: int | None, timeout: float) -> bool:
        """Wait (at most ``timeout``) until the container's PID 1 is no longer runc's own init ("runc:[2:INIT]"):
        a container is "running" as soon as `runc start` opened its exec fifo, a moment before runc init execs the
        command. A SIGTERM in that moment reaches the Go runtime, which as PID 1 cannot die of it and exits 2
        (1 of 6 stops right after a start in a CI run), so the container's exit code said 2, not 143."""
        if not pid:
            return True

        def exec_done() -> bool:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    return not f.read().startswith("runc:")
            except OSError:
                return True                                     # gone: nothing to wait for
        return wait_until(exec_done, timeout, self.wait_clock)

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        obs = self.status(id)
        if obs.state not in ("running", "created") or obs.pid is None and self._waiting(id):
            return obs                                          # nothing runs (a created one is never started)
        if obs.state == "running" and grace_s > 0:
            # SIGTERM again every TERM_AGAIN_S of the grace: one that reaches the container's PID 1 before it has
            # exec'd tini (or before tini blocked its signals) is dropped, as PID 1 of a pid namespace ignores
            # what it has no handler for, and a container stopped 0.1 s after its start then sat out the whole
            # grace (10 s; 10 of 327 removals in the jepsen-style runc runs of issue 16). A program that takes a
            # second SIGTERM as "now" (a few do) gives up the rest of its grace.
            deadline = self.wait_clock.monotonic() + grace_s
            self._wait_init_exec(obs.pid, min(grace_s, INIT_EXEC_WAIT_S))
            while True:
                self.kill(id, signal.SIGTERM)
                left = deadline - self.wait_clock.monotonic()
                if self._wait_exit(id, max(0.0, min(TERM_AGAIN_S, left))):
                    return self.status(id)
                if left <= TERM_AGAIN_S:
                    break
            log.warning("%s ignored SIGTERM for %.1fs; sending SIGKILL", id, grace_s)
        self.kill(id, signal.SIGKILL)
        self._wait_exit(id, 5.0)
        return self.status(id)

    def status(self, id: str) -> Observed:
        b = self.bundle(id)
        if not os.path.isdir(b):
            return Observed("missing")
        started = self._read(id, "started_at")
        started_at = float(started) if started else None
        info = self._exit_info(id)
        if info is None:
            fast = self._fast_running(id, started_at)
            if fast is not None:
                return fast
            if self._waiting(id):
                return Observed("created")
            r = self._run("state", id, check=False)
            if r.returncode != 0:
                return Observed("missing", reason="runc knows no such container")
            st = json.loads(r.stdout)
            state = st.get("status")
            if state in ("running", "paused"):
                return Observed("running", pid=st.get("pid"), started_at=started_at)
            if state in ("created", "creating"):
                return Observed("created", pid=st.get("pid"))
            if self._wait_exit(id, 1.0):                         # the shim is writing exit.json
                info = self._exit_info(id)
        if info is None:
            oom = self.cgroup(id).oom_kills() > 0
            return Observed("oom_killed" if oom else "exited", started_at=started_at,
                            reason="exit code unknown: the shim is gone")
        oom = int(info.get("oom_kills") or 0) > 0 or self.cgroup(id).oom_kills() > 0
        return Observed("oom_killed" if oom else "exited", pid=info.get("pid"), exit_code=info.get("code"),
                        started_at=started_at, reason="OOM-killed at the memory limit" if oom else None)

    def stats(self, id: str) -> Stats:
        return self.cgroup(id).stats()

    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        proc = subprocess.Popen(self._argv("exec", id, *argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return 124, out.decode(errors="replace")

    def list_existing(self) -> list[str]:
        """This cluster's containers in this data dir: a bundle another cluster's agent left here (the data dir
        reused) is not listed, so it is never adopted, stopped or removed by this agent."""
        ids = self._runc_ids()
        for name in os.listdir(self.containers_dir):
            if os.path.exists(os.path.join(self.containers_dir, name, "spec.json")):
                ids.add(name)
        mine = []
        for id in sorted(ids):
            if not ID_RE.match(id):
                continue
            owner = self.owner(id)
            if self.cluster is not None and owner is not None and owner != self.cluster:
                if id not in self._foreign:
                    self._foreign.add(id)
                    log.warning("container %s in %s belongs to cluster %s, not %s: left alone", id,
                                self.data_dir, owner, self.cluster)
                continue
            mine.append(id)
        now = time.monotonic()
        if self._swept_at is None or now - self._swept_at >= SWEEP_EVERY_S:
            self._swept_at = now
            self._sweep_network(set(mine))
        return mine

    def _runc_ids(self) -> set[str]:
        """The containers runc keeps state for under its ``--root``: a directory per container holding its
        ``state.json``, which is what ``runc list`` reads. Read here without starting runc: a ``runc list`` cost
        10 ms of CPU with 15 containers (measured), and the agent lists after every assignment answer, beside
        the start the answer asked for."""
        try:
            names = os.listdir(self.runc_root)
        except FileNotFoundError:
            return set()
        return {n for n in names if os.path.isfile(os.path.join(self.runc_root, n, "state.json"))}

    def _sweep_network(self, live: set[str]) -> None:
        """Level-triggered repair after a crash or restart: namespaces and veths of containers that are gone are
        removed, and the table is rewritten for the bridge containers there are (no import of pyroute2 when this
        agent never made a bridge container)."""
        if self._bridge is None and not self.net_names.ids_in_run_dir() and not self._bridge_specs(live):
            return
        try:
            self.bridge_net().sweep(live)
            self._sync_bridge(live)
        except Exception as exc:          # the containers' own life cycle goes on; the next sweep tries again
            log.warning("network sweep failed: %s", exc)

    def spec_of(self, id: str) -> ContainerSpec | None:
        text = self._read(id, "spec.json")
        return ContainerSpec.from_dict(json.loads(text)) if text else None

    def writable_paths(self, id: str) -> list[str]:
        """Its private /data and, for a writable root on overlay, the upper directory (a writable root on a btrfs
        snapshot shares its blocks with the image and is not counted: docs/security.md)."""
        b = self.bundle(id)
        return [os.path.join(b, "data"), os.path.join(b, "upper")]

    def rotate_logs(self, id: str) -> None:
        spec = self.spec_of(id)
        if spec:
            logs.rotate(spec.log_dir, spec.log_max_bytes, spec.log_keep)

    def close(self) -> None:
        self.shims.close()

    def __del__(self) -> None:
        try:
            self.shims.close()
        except Exception:
            pass

    def remove(self, id: str) -> None:
        b = self.bundle(id)
        spec = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            spec = self.spec_of(id)
        r = self._run("delete", "--force", id, check=False)
        if r.returncode != 0 and "does not exist" not in r.stderr and "not exist" not in r.stderr:
            log.warning("runc delete %s: %s", id, r.stderr.strip())
        if os.path.isdir(b):
            if os.path.exists(os.path.join(b, "shim.pid")):
                self._wait_exit(id, 2.0)                   # let the shim record the exit first
            rootfs.release_root(b)
            rootfs.remove_tree(b)
        self._cgroup_paths.pop(id, None)
        self._prune_scope()
        if (spec is not None and spec.network == "bridge" and spec.netns is None) or \
                os.path.lexists(self.net_names.netns(id)):
            net = self.bridge_net()
            net.detach(id)
            self._sync_bridge(force=False)
        log.info("removed %s", id)


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]


class ShimPool:
    """Keeps one shim started ahead of time, so Python's start-up (tens of ms) is not on the
    container start path. An idle shim exits when its command pipe closes."""

    def __init__(self, python: str, err_path: str) -> None:
        self.python = python
        self.err_path = err_path
        self.lock = threading.Lock()
        self.idle: tuple[subprocess.Popen, int, int] | None = None
        self.closed = False
        self._warm()

    def _warm(self) -> None:
        cmd_r, cmd_w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            with open(self.err_path, "ab") as err:
                proc = subprocess.Popen([self.python, "-I", "-S", SHIM, "--warm", str(cmd_r), str(ready_w)],
                                        pass_fds=(cmd_r, ready_w), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err)
        except BaseException:
            for fd in (cmd_w, ready_r):
                os.close(fd)
            raise
        finally:
            os.close(cmd_r)
            os.close(ready_w)
        self.idle = (proc, cmd_w, ready_r)

    def run(self, state_dir: str, timeout: float = 30.0) -> int | str:
        """Hand ``<state_dir>/shim.json`` to the idle shim; the container's init pid, or why not. The next
        shim is started once this one answered, so its Python start-up does not compete with the container's."""
        cfg_path = os.path.join(state_dir, SHIM_CFG)
        with self.lock:
            if self.idle is None:
                self._warm()
            assert self.idle is not None
            proc, cmd_w, ready_r = self.idle
            self.idle = None
            try:
                os.write(cmd_w, cfg_path.encode() + b"\n")
            finally:
                os.close(cmd_w)
        try:
            proc.wait()
            return read_ready(ready_r, state_dir, timeout)
        finally:
            with self.lock:
                if self.idle is None and not self.closed:
                    self._warm()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.idle is not None:
                proc, cmd_w, ready_r = self.idle
                self.idle = None
                os.close(cmd_w)
                os.close(ready_r)
                proc.wait()


def spawn_shim(python: str, state_dir: str, cfg: dict[str, Any], timeout: float = 30.0) -> int | str:
    """Start a detached shim (cold); return the container's init pid once it exists, or why not."""
    cfg_path = os.path.join(state_dir, "shim.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    r, w = os.pipe()
    try:
        with open(os.path.join(state_dir, "shim.err"), "ab") as err:
            proc = subprocess.Popen([python, "-I", "-S", SHIM, cfg_path, str(w)], pass_fds=(w,),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        os.close(w)
        w = -1
        proc.wait()
    except BaseException:
        os.close(r)
        raise
    finally:
        if w >= 0:
            os.close(w)
    return read_ready(r, state_dir, timeout)


def read_ready(r: int, state_dir: str, timeout: float) -> int | str:
    """Read the shim's ``ok <pid>`` / ``err <why>`` line from fd ``r`` (and close it): the pid, or why not."""
    try:
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 256)
            if not chunk:
                break
            buf += chunk
        msg = buf.decode().strip()
        if msg.startswith("ok "):
            return int(msg.split()[1])
        why = msg.removeprefix("err ") or "the shim did not answer"
        log.error("shim for %s: %s", state_dir, why)
        return why
    finally:
        os.close(r)
