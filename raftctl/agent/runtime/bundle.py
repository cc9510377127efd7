"""The OCI runtime config (config.json) for one container (pure: no I/O)."""
from __future__ import annotations

import re
from typing import Any

from raftctl.agent.runtime import seccomp
from raftctl.agent.runtime.base import ContainerSpec, RuntimeError_

CPU_PERIOD = 100_000
# `base: host`: the host directories programs run from, bound recursively read-only under the image.
HOST_BASE_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
# ...and from the host's /etc only what programs read to run (the loader's cache, TLS trust, name resolution,
# time zone, MIME types, Python's config); never /etc itself (shadow, ssh keys, the agent's own config).
# passwd and group are generated per container (see passwd_group), not the host's.
HOST_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf",
            "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "protocols", "services",
            "localtime", "timezone", "mime.types", "python3", "python3.11", "python3.12", "python3.13")
# A job may ask for these (Docker's default set); it gets none unless it lists them. The control plane's spec
# validation holds the same list; the agent checks again, as every edge does.
ALLOWED_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP"})
HOST_BIND_OPTIONS = ["rbind", "ro", "rro", "nosuid", "nodev", "rprivate"]   # rro: submounts read-only too
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Where the init (tini) is bind-mounted read-only. As PID 1 of its pid namespace a process gets no
# default signal actions, so a service without a SIGTERM handler would ignore the graceful stop;
# tini runs the command as its child and forwards signals to the child's process group (-g).
INIT_PATH = "/.raftctl-init"


def hostname(spec: ContainerSpec) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{spec.job}-{spec.replica}".lower())[:63]


def capabilities(uid: int, asked: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Exactly the capabilities the job asked for, in every set that keeps them across exec; none by default,
    for root too. A non-root uid keeps them through the ambient set (which needs them inheritable)."""
    caps = sorted(set(asked))
    for cap in caps:
        if cap not in ALLOWED_CAPS:
            raise RuntimeError_(f"capability {cap!r} is not one a job may ask for")
    ambient = list(caps) if uid != 0 else []
    return {"bounding": list(caps), "effective": list(caps), "permitted": list(caps),
            "inheritable": list(ambient), "ambient": list(ambient)}


def passwd_group(uid: int, gid: int) -> tuple[str, str]:
    """Minimal /etc/passwd and /etc/group for a `base: host` container: root, nobody and its own uid/gid
    (the host's files are never shown)."""
    users = {0: "root:x:0:0:root:/root:/usr/sbin/nologin", 65534: "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"}
    groups = {0: "root:x:0:", 65534: "nogroup:x:65534:"}
    users.setdefault(uid, f"app:x:{uid}:{gid}:app:/tmp:/usr/sbin/nologin")
    groups.setdefault(gid, f"app:x:{gid}:")
    return ("".join(users[k] + "\n" for k in sorted(users)), "".join(groups[k] + "\n" for k in sorted(groups)))


def mounts(spec: ContainerSpec, data_dir: str | None, host_binds: list[str], tmp_size: int,
           init: str | None = None, files: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``host_binds``: host paths bound at the same place, recursively read-only; ``files``: container
    path -> host file (or directory) bound read-only there (the /etc files of `base: host`)."""
    out: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={tmp_size}"]},
    ]
    if data_dir:
        out.append({"destination": "/data", "type": "bind", "source": data_dir,
                    "options": ["rbind", "rw", "nosuid", "nodev"]})
    for path in host_binds:
        out.append({"destination": path, "type": "bind", "source": path, "options": list(HOST_BIND_OPTIONS)})
    for dest, source in sorted((files or {}).items()):
        out.append({"destination": dest, "type": "bind", "source": source,
                    "options": [*HOST_BIND_OPTIONS, "noexec"]})
    if init:
        out.append({"destination": INIT_PATH, "type": "bind", "source": init,
                    "options": ["bind", "ro", "nosuid", "nodev"]})
    return out


def process_args(command: list[str], init: str | None) -> list[str]:
    """The container's argv: the command under the init when there is one (signals reach its whole group)."""
    return [INIT_PATH, "-g", "--", *command] if init else list(command)


def resources(spec: ContainerSpec, memsw: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    res = spec.resources
    if res.memory > 0:
        r["memory"] = {"limit": res.memory}
        if memsw:
            r["memory"]["swap"] = res.memory        # memory+swap = memory: no swapping past the limit
    if res.cpu > 0:
        r["cpu"] = {"quota": max(1000, res.cpu * CPU_PERIOD // 1000), "period": CPU_PERIOD,
                    "shares": max(2, res.cpu * 1024 // 1000)}
    if res.pids > 0:
        r["pids"] = {"limit": res.pids}
    return r


def config(spec: ContainerSpec, *, cgroups_path: str, data_dir: str | None, host_binds: list[str],
           memsw: bool, netns: str | None = None, init: str | None = None,
           files: dict[str, str] | None = None) -> dict[str, Any]:
    """``init``: host path of a static init binary (tini-static) to run as PID 1; None runs the command as PID 1.
    Contained by default: the spec's uid (65534 unless it asks), only the capabilities it lists,
    ``noNewPrivileges``, the seccomp profile of seccomp.py, host files only read-only."""
    uid, gid = spec.uid_gid
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "mount", "uts", "ipc")]
    if spec.network == "bridge":
        namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    tmp_size = min(spec.resources.memory, 256 << 20) if spec.resources.memory else 64 << 20
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": process_args(spec.command, init),
            "env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
            "cwd": "/",
            "capabilities": capabilities(uid, spec.capabilities),
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": spec.read_only_root},
        "hostname": hostname(spec),
        "mounts": mounts(spec, data_dir, host_binds, max(tmp_size, 1 << 20), init, files),
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources(spec, memsw),
            "namespaces": namespaces,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
            "seccomp": seccomp.profile(spec.capabilities),
        },
        "annotations": {"raftctl.job": spec.job, "raftctl.replica": str(spec.replica),
                        "raftctl.image": spec.image},
    }
