"""Container roots: a btrfs snapshot of the unpacked image where the store is on btrfs,
an overlayfs mount (image lower, private upper + work) otherwise."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import subprocess
from typing import Any, Callable

log = logging.getLogger("raftctl.agent.rootfs")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2
KIND_FILE = "rootfs.kind"


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) for every mount, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            out.append((point, fstype, source))
    return out


def mount_of(path: str) -> tuple[str, str, str]:
    """The mount holding ``path``: the longest matching mount point (the last one mounted wins)."""
    path = os.path.realpath(path)
    best = ("/", "", "")
    for point, fstype, source in _mountinfo():
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if len(point) >= len(best[0]):
                best = (point, fstype, source)
    return best


def fs_type(path: str) -> str:
    return mount_of(path)[1]


def is_btrfs(path: str) -> bool:
    return fs_type(path) == "btrfs"


def run(argv: list[str], timeout: float = 60.0) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise OSError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):   # not mounted / gone: fine
            raise OSError(e, f"umount {target}: {os.strerror(e)}")


def btrfs_subvolume_create(path: str) -> None:
    run(["btrfs", "subvolume", "create", path])


def btrfs_set_readonly(path: str) -> None:
    run(["btrfs", "property", "set", "-ts", path, "ro", "true"])


def btrfs_subvolume_delete(path: str) -> None:
    run(["btrfs", "subvolume", "delete", path])


def is_subvolume(path: str) -> bool:
    try:
        return os.lstat(path).st_ino == 256 and is_btrfs(path)
    except FileNotFoundError:
        return False


def make_root(image_root: str, bundle: str) -> str:
    """Give ``bundle/rootfs`` a private writable copy of ``image_root``; return the kind used."""
    target = os.path.join(bundle, "rootfs")
    same_btrfs = (is_subvolume(image_root) and is_btrfs(bundle)
                  and mount_of(image_root)[2] == mount_of(bundle)[2])
    if same_btrfs:
        run(["btrfs", "subvolume", "snapshot", image_root, target])
        kind = "btrfs"
    else:
        upper, work = os.path.join(bundle, "upper"), os.path.join(bundle, "work")
        for d in (target, upper, work):
            os.makedirs(d, exist_ok=True)
        mount("overlay", target, "overlay", 0, f"lowerdir={image_root},upperdir={upper},workdir={work}")
        kind = "overlay"
    with open(os.path.join(bundle, KIND_FILE), "w") as f:
        f.write(kind)
    log.debug("root for %s: %s of %s", bundle, kind, image_root)
    return kind


def release_root(bundle: str) -> None:
    """Undo make_root (idempotent)."""
    target = os.path.join(bundle, "rootfs")
    try:
        with open(os.path.join(bundle, KIND_FILE)) as f:
            kind = f.read().strip()
    except FileNotFoundError:
        kind = "overlay"
    if kind == "btrfs":
        if os.path.exists(target):
            btrfs_subvolume_delete(target)
    else:
        umount(target)


def remove_tree(path: str) -> None:
    """rm -rf that deletes btrfs subvolumes it meets instead of failing on them."""
    if not os.path.lexists(path):
        return
    if is_subvolume(path):
        btrfs_subvolume_delete(path)
        return
    shutil.rmtree(path, ignore_errors=False, onerror=_on_rm_error)


def _on_rm_error(func: Callable[..., Any], path: str, exc_info: Any) -> None:
    if is_subvolume(path):
        btrfs_subvolume_delete(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        umount(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        raise exc_info[1]
