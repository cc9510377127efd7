"""The image store: content-addressed blobs, name -> digest refs, OCI layout build and
import, and unpacking each image once per digest with path safety.

Layout under ``root``::

    blobs/sha256/<hex>     every blob, verified by digest on the way in and on unpack
    refs.json              {"name:tag": "sha256:<manifest hex>"}
    rootfs/<hex>/          the unpacked image of manifest <hex> (a read-only btrfs subvolume on btrfs)
    used/<hex>             its mtime: when image <hex> was last pulled, unpacked or seen in use (for GC)

Garbage collection (``gc``) removes an image's unpacked tree once nothing on the machine
has used it for longer than a grace period, and then every blob no remaining image needs.
"""
from __future__ import annotations

import builtins
import fcntl
import gzip
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from contextlib import contextmanager
from typing import IO, AbstractSet, Callable, Iterator, Mapping, Protocol, TypeVar, cast

from raftctl import gate, oci
from raftctl.agent import rootfs
from raftctl.errors import ValidationError
from raftctl.oci import ImageError

log = logging.getLogger("raftctl.agent.images")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,128})?$")
BLOB_PATH_RE = re.compile(r"^blobs/sha256/[0-9a-f]{64}$")
T = TypeVar("T")


class BlobSource(Protocol):
    """Where an agent pulls blobs from (the control replicas, see agent/control.py)."""

    def fetch(self, digest: str, consume: Callable[[IO[bytes]], T]) -> T:
        """Open blob ``digest`` and return ``consume(stream)``; try the next source when ``consume``
        raises ImageError (a tampered copy) or the transfer fails; ImageError when none served it."""
        ...


def images_to_collect(last_used: Mapping[str, float], in_use: AbstractSet[str], now: float,
                      grace_s: float) -> list[str]:
    """The images (manifest digests) garbage collection removes: nothing uses them now and their last use
    (seconds, the same clock as ``now``) is more than ``grace_s`` ago. ``grace_s <= 0`` turns GC off."""
    if grace_s <= 0:
        return []
    return sorted(d for d, t in last_used.items() if d not in in_use and now - t > grace_s)


class ImageStore:
    def __init__(self, root: str, clock: Callable[[], float] = time.time) -> None:
        self.root = os.path.abspath(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.unpacked = os.path.join(self.root, "rootfs")
        self.used = os.path.join(self.root, "used")
        self.clock = clock
        os.makedirs(self.blobs, exist_ok=True)
        os.makedirs(self.unpacked, exist_ok=True)
        os.makedirs(self.used, exist_ok=True)

    # -- blobs ------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, oci.split_digest(digest))

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), verified."""
        with open(self.blob_path(digest), "rb") as f:
            data = f.read()
        if oci.sha256_bytes(data) != digest:
            raise ImageError(f"blob {digest} does not match its digest (tampered or corrupt)")
        return data

    def put_blob(self, stream: IO[bytes], expected: str | None = None) -> tuple[str, int]:
        """Copy ``stream`` into the store; refuse it if it does not hash to ``expected``."""
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".in-")
        try:
            reader = oci.HashingReader(stream)
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: reader.read(oci.CHUNK), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + reader.h.hexdigest()
            if expected is not None and digest != expected:
                raise ImageError(f"blob claimed {expected} but hashes to {digest}: refused")
            os.replace(tmp, self.blob_path(digest))
            return digest, reader.size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_blob(io.BytesIO(data), oci.sha256_bytes(data))

    # -- refs -------------------------------------------------------------------------------
    def refs(self) -> dict[str, str]:
        try:
            with open(os.path.join(self.root, "refs.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def tag(self, name: str, digest: str) -> None:
        if not NAME_RE.match(name):
            raise ImageError(f"image name {name!r} is not like web:1")
        oci.split_digest(digest)
        with self._lock("refs"):
            refs = self.refs()
            refs[name] = digest
            tmp = os.path.join(self.root, ".refs.json.tmp")
            with open(tmp, "w") as f:
                json.dump(refs, f, sort_keys=True, indent=1)
            os.replace(tmp, os.path.join(self.root, "refs.json"))

    def resolve(self, ref: str) -> str:
        """``name:tag`` or ``sha256:<hex>`` -> manifest digest."""
        if ref.startswith("sha256:"):
            oci.split_digest(ref)
            return ref
        refs = self.refs()
        if ref not in refs:
            raise ImageError(f"no image named {ref!r}")
        return refs[ref]

    def list(self) -> list[dict]:
        return [{"name": n, "digest": d, "size": self.image_size(d)} for n, d in sorted(self.refs().items())]

    def manifest(self, digest: str) -> dict:
        return oci.parse_manifest(self.read_blob(digest))

    def image_size(self, digest: str) -> int:
        try:
            m = self.manifest(digest)
        except (OSError, ImageError):
            return 0
        return sum(int(x.get("size", 0)) for x in [m["config"], *m["layers"]]) + os.path.getsize(self.blob_path(digest))

    def base_of(self, digest: str) -> str:
        return (self.manifest(digest).get("annotations") or {}).get(oci.BASE_LABEL, "scratch")

    # -- pull -----------------------------------------------------------------------------
    def pull(self, digest: str, source: BlobSource) -> int:
        """Fetch the manifest, config and layer blobs of image ``digest`` that the store lacks.
        Each is verified against its digest on the way in, so a tampered blob is refused and
        never stored. Returns the number of bytes fetched (0 when everything was here).
        Replicas of one job starting together on a machine wait for one pull, not each its own."""
        with self._lock("pull-" + oci.split_digest(digest)), self._lock("blobs", shared=True):
            self.touch(digest, self.clock())
            fetched = self._ensure_blob(digest, source, verify=True)
            m = self.manifest(digest)
            fetched += self._ensure_blob(m["config"]["digest"], source, verify=True)
            for layer in m["layers"]:
                fetched += self._ensure_blob(layer["digest"], source, verify=False)   # verified on unpack
        if fetched:
            log.info("pulled %s: %d bytes", digest, fetched)
        return fetched

    def _ensure_blob(self, digest: str, source: BlobSource, verify: bool) -> int:
        if self.has_blob(digest):
            if not verify:
                return 0
            try:
                self.read_blob(digest)
                return 0
            except ImageError as exc:
                log.warning("%s; fetching it again", exc)
                os.unlink(self.blob_path(digest))
        _, size = source.fetch(digest, lambda stream: self.put_blob(stream, digest))
        return size

    # -- build and import -----------------------------------------------------------------
    def build(self, src_dir: str, name: str | None = None, base: str = "scratch") -> str:
        """A one-layer image of ``src_dir``; the same directory always gives the same digest."""
        if base not in ("host", "scratch"):
            raise ImageError(f"base {base!r} is not host or scratch")
        with self._lock("blobs", shared=True):      # GC leaves the blobs alone until the image is recorded
            return self._build(src_dir, name, base)

    def _build(self, src_dir: str, name: str | None, base: str) -> str:
        with tempfile.TemporaryFile(dir=self.blobs) as tmp:
            oci.write_layer(src_dir, tmp)
            tmp.seek(0)
            layer_digest, layer_size = self.put_blob(tmp)
        config = oci.canonical_json(oci.image_config(layer_digest, base))
        cdig, csize = self.put_bytes(config)
        man = oci.canonical_json(oci.manifest(oci.descriptor(oci.MT_CONFIG, cdig, csize),
                                              [oci.descriptor(oci.MT_LAYER, layer_digest, layer_size)], base))
        mdig, _ = self.put_bytes(man)
        self.touch(mdig, self.clock())
        if name:
            self.tag(name, mdig)
        log.info("built image %s (%s) from %s", name or "", mdig, src_dir)
        return mdig

    def export_layout(self, digest: str, dest: str, name: str | None = None) -> None:
        """Write an OCI image layout directory holding image ``digest``."""
        m = self.manifest(digest)
        os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
        for d in [digest, m["config"]["digest"], *(x["digest"] for x in m["layers"])]:
            shutil.copyfile(self.blob_path(d), os.path.join(dest, "blobs", "sha256", oci.split_digest(d)))
        ann = {oci.REF_NAME: name} if name else None
        desc = oci.descriptor(oci.MT_MANIFEST, digest, os.path.getsize(self.blob_path(digest)), ann)
        with open(os.path.join(dest, "index.json"), "wb") as f:
            f.write(oci.canonical_json(oci.index(desc)))
        with open(os.path.join(dest, "oci-layout"), "wb") as f:
            f.write(oci.canonical_json(oci.LAYOUT_VERSION))

    def import_archive(self, path: str, name: str | None = None) -> builtins.list[str]:
        """Import an OCI layout archive (tar, optionally gzip); every blob is checked by digest."""
        with self._lock("blobs", shared=True):      # GC leaves the blobs alone until the images are recorded
            return self._import_archive(path, name)

    def _import_archive(self, path: str, name: str | None) -> builtins.list[str]:
        index_data: bytes | None = None
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                member_name = member.name
                while member_name.startswith("./"):
                    member_name = member_name[2:]
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ImageError(f"{member.name}: only regular files belong in an image layout archive")
                f = tar.extractfile(member)
                assert f is not None
                if member_name == "index.json":
                    index_data = f.read(1 << 20)
                elif member_name == "oci-layout":
                    continue
                elif BLOB_PATH_RE.match(member_name):
                    self.put_blob(f, "sha256:" + member_name.rsplit("/", 1)[1])
                else:
                    raise ImageError(f"{member.name}: unexpected path in an image layout archive")
        if index_data is None:
            raise ImageError("archive has no index.json")
        return self._register_index(index_data, name)

    def import_layout(self, layout_dir: str, name: str | None = None) -> builtins.list[str]:
        """Import an OCI layout directory; every blob is checked by digest."""
        with self._lock("blobs", shared=True):
            return self._import_layout(layout_dir, name)

    def _import_layout(self, layout_dir: str, name: str | None) -> builtins.list[str]:
        blob_dir = os.path.join(layout_dir, "blobs", "sha256")
        for hexname in sorted(os.listdir(blob_dir)):
            p = os.path.join(blob_dir, hexname)
            if not os.path.isfile(p) or os.path.islink(p):
                raise ImageError(f"{p}: not a regular file")
            with open(p, "rb") as f:
                self.put_blob(f, "sha256:" + hexname)
        with open(os.path.join(layout_dir, "index.json"), "rb") as f:
            return self._register_index(f.read(), name)

    def _register_index(self, data: bytes, name: str | None) -> builtins.list[str]:
        try:  # an archive's index.json is untrusted bytes like any manifest: through the gate
            idx = gate.decode_json(data, limits=oci.MANIFEST_LIMITS, root="index.json")
        except ValidationError as exc:
            raise ImageError(f"index.json: {exc}") from None
        manifests = idx.get("manifests", []) if isinstance(idx, dict) else None
        if not isinstance(manifests, list) or not all(isinstance(x, dict) for x in manifests):
            raise ImageError("index.json is not an OCI image index (manifests: a list of descriptors)")
        digests = []
        for desc in manifests:
            d = desc.get("digest", "")
            m = self.manifest(d)     # verifies the manifest blob
            self.read_blob(m["config"]["digest"])
            for layer in m["layers"]:
                if not self.has_blob(layer["digest"]):
                    raise ImageError(f"layer {layer['digest']} is missing from the layout")
                if oci.sha256_file(self.blob_path(layer["digest"])) != layer["digest"]:
                    raise ImageError(f"layer {layer['digest']} does not match its digest: refused")
            self.touch(d, self.clock())
            ref = name or (desc.get("annotations") or {}).get(oci.REF_NAME)
            if ref:
                self.tag(ref if ":" in ref else f"{ref}:latest", d)
            digests.append(d)
        if not digests:
            raise ImageError("index.json lists no manifests")
        return digests

    # -- unpack -----------------------------------------------------------------------------
    def unpacked_path(self, digest: str) -> str:
        return os.path.join(self.unpacked, oci.split_digest(digest))

    def unpack(self, digest: str) -> str:
        """The unpacked root of image ``digest``, unpacking it the first time (once per digest)."""
        final = self.unpacked_path(digest)
        # under the lock even when unpacked: GC holds it while it removes a tree, and sees this use
        with self._lock("unpack-" + oci.split_digest(digest)):
            self.touch(digest, self.clock())
            if os.path.isdir(final):
                return final
            m = self.manifest(digest)
            tmp = final + ".tmp"
            rootfs.remove_tree(tmp)
            on_btrfs = rootfs.is_btrfs(self.unpacked)
            if on_btrfs:
                rootfs.btrfs_subvolume_create(tmp)
            else:
                os.mkdir(tmp, 0o755)
            try:
                with self._lock("blobs", shared=True):
                    for layer in m["layers"]:
                        self._apply_layer(layer, tmp)
                os.chmod(tmp, 0o755)
                os.rename(tmp, final)
            except BaseException:
                rootfs.remove_tree(tmp)
                raise
            if on_btrfs:
                rootfs.btrfs_set_readonly(final)
            log.info("unpacked %s into %s%s", digest, final, " (btrfs subvolume)" if on_btrfs else "")
            return final

    def _apply_layer(self, layer: dict, dest: str) -> None:
        failure: Exception | None = None
        with open(self.blob_path(layer["digest"]), "rb") as raw:
            reader = oci.HashingReader(raw)
            buffered = io.BufferedReader(reader, oci.CHUNK)
            stream: IO[bytes] = (cast(IO[bytes], gzip.GzipFile(fileobj=buffered))
                                 if layer["mediaType"] == oci.MT_LAYER_GZIP else cast(IO[bytes], buffered))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    dirs: list[tuple[str, int]] = []
                    for member in tar:
                        extract_member(tar, member, dest, dirs)
                    for path, mtime in reversed(dirs):
                        os.utime(path, (mtime, mtime), follow_symlinks=False)
                if stream is not buffered:
                    stream.read()
            except (tarfile.TarError, OSError, EOFError, ImageError) as exc:
                failure = exc                  # a corrupt blob shows up here first: check the digest below
            for _ in iter(lambda: buffered.read(oci.CHUNK), b""):
                pass
            got = "sha256:" + reader.h.hexdigest()
        if got != layer["digest"]:
            os.unlink(self.blob_path(layer["digest"]))     # a later pull fetches a good copy
            raise ImageError(f"layer {layer['digest']} hashes to {got} (tampered or corrupt): refused")
        if isinstance(failure, ImageError):
            raise failure
        if failure is not None:
            raise ImageError(f"layer {layer['digest']} could not be unpacked: {failure}") from failure

    def remove_unpacked(self, digest: str) -> None:
        rootfs.remove_tree(self.unpacked_path(digest))

    # -- garbage collection ---------------------------------------------------------------
    def touch(self, digest: str, at: float) -> None:
        """Record that image ``digest`` was used at ``at`` (seconds since the epoch)."""
        path = os.path.join(self.used, oci.split_digest(digest))
        with open(path, "a"):
            pass
        os.utime(path, (at, at))

    def last_used(self) -> dict[str, float]:
        """Every image the store has pulled or unpacked -> when it was last used."""
        out = {}
        for name in os.listdir(self.used):
            if re.fullmatch(r"[0-9a-f]{64}", name):
                try:
                    out["sha256:" + name] = os.stat(os.path.join(self.used, name)).st_mtime
                except FileNotFoundError:
                    continue
        return out

    def gc(self, in_use: AbstractSet[str], now: float, grace_s: float) -> builtins.list[str]:
        """Remove the unpacked tree of every image ``images_to_collect`` picks, then every blob no remaining
        image needs. ``in_use``: the manifest digests some container on
        this machine runs or is assigned. An image being pulled or unpacked (its per-digest lock held) is
        skipped this time, and one whose use was recorded after ``in_use`` was computed is kept. Images
        tagged in this store (refs.json: local builds) are kept. Returns the images removed."""
        if grace_s <= 0:
            return []
        keep = set(in_use) | set(self.refs().values())
        for d in keep:
            if self.has_blob(d) or os.path.isdir(self.unpacked_path(d)):
                self.touch(d, now)
        last = self.last_used()
        for name in os.listdir(self.unpacked):
            if re.fullmatch(r"[0-9a-f]{64}", name) and "sha256:" + name not in last:
                self.touch("sha256:" + name, now)   # unpacked before GC existed: its grace starts now
                last["sha256:" + name] = now
        removed = []
        for digest in images_to_collect(last, keep, now, grace_s):
            hexname = oci.split_digest(digest)
            with self._try_lock("pull-" + hexname) as pulling_free, self._try_lock("unpack-" + hexname) as free:
                if not (pulling_free and free):
                    continue                      # a pull or unpack of it is in progress
                try:
                    used_at = os.stat(os.path.join(self.used, hexname)).st_mtime
                except FileNotFoundError:
                    continue
                if now - used_at <= grace_s:
                    continue                      # used again since the list was made
                rootfs.remove_tree(self.unpacked_path(digest))
                os.unlink(os.path.join(self.used, hexname))
            removed.append(digest)
            log.info("image GC: removed %s (last used %.0f s ago)", digest, now - used_at)
        self._gc_blobs()
        return removed

    def _needed_blobs(self) -> set[str]:
        needed: set[str] = set(self.refs().values())
        for digest in [*self.last_used(), *needed]:
            needed.add(digest)
            try:
                m = self.manifest(digest)
            except (OSError, ImageError):
                continue
            needed.update([m["config"]["digest"], *(x["digest"] for x in m["layers"])])
        return needed

    def _gc_blobs(self) -> int:
        """Remove blobs no image recorded in the store (used/, refs.json) needs; skipped while a pull, unpack,
        build or import holds the blobs (the next pass collects them). Returns the number removed."""
        removed = 0
        with self._try_lock("blobs") as free:
            if not free:
                return 0
            needed = self._needed_blobs()
            for name in os.listdir(self.blobs):
                path = os.path.join(self.blobs, name)
                if not re.fullmatch(r"[0-9a-f]{64}", name) or "sha256:" + name in needed:
                    continue
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            log.info("image GC: removed %d blobs no image needs", removed)
        return removed

    @contextmanager
    def _lock(self, what: str, shared: bool = False) -> Iterator[None]:
        path = os.path.join(self.root, f".lock-{what}")
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def _try_lock(self, what: str) -> Iterator[bool]:
        """An exclusive lock if it is free now: yields whether it was taken."""
        path = os.path.join(self.root, f".lock-{what}")
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# -- safe extraction ------------------------------------------------------------------------
def safe_relpath(name: str) -> str:
    """A layer entry name as a clean relative path; absolute paths, ``..`` and NUL bytes are refused."""
    if "\x00" in name:
        raise ImageError(f"{name!r}: NUL byte in a layer path")
    if name.startswith("/"):
        raise ImageError(f"{name!r}: absolute path in a layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return ""
    if any(p == ".." for p in parts):
        raise ImageError(f"{name!r}: '..' in a layer path")
    return "/".join(parts)


WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def whiteout_target(base: str) -> str | None:
    """For a layer entry's last component: None if it is not a whiteout, "" for the opaque whiteout
    (``.wh..wh..opq``: hide the directory's lower contents), else the plain file name it removes.
    A whiteout names one plain entry of its own directory: ``.wh.`` alone, ``.wh..``, ``.wh...`` and other
    ``.wh..wh.*`` names are refused (``.wh..`` used to remove the directory being unpacked, ``.wh...``
    the directory holding every unpacked image)."""
    if not base.startswith(WHITEOUT):
        return None
    if base == OPAQUE:
        return ""
    target = base[len(WHITEOUT):]
    if target in ("", ".", "..") or "/" in target or target.startswith(WHITEOUT):
        raise ImageError(f"{base!r}: a whiteout must name one plain file (.wh.<name>)")
    return target


def _inside(root: str, path: str) -> bool:
    """``path`` is ``root`` or below it (both absolute; compared without following symlinks)."""
    root, path = os.path.normpath(root), os.path.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _parent_dirs_safe(dest: str, rel: str) -> str:
    """Make the parents of ``rel`` under ``dest``, refusing to go through any symlink."""
    cur = dest
    for part in rel.split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ImageError(f"{rel!r}: goes through the symlink {part!r} (escape refused)")
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{rel!r}: parent {part!r} is not a directory")
    return os.path.join(dest, rel)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, dirs: list[tuple[str, int]]) -> None:
    rel = safe_relpath(member.name)
    if not rel:
        return
    path = _parent_dirs_safe(dest, rel)
    parent = os.path.dirname(path)
    if not (_inside(dest, parent) and _inside(dest, os.path.realpath(parent))):
        raise ImageError(f"{member.name!r}: resolves outside the image root (escape refused)")
    base = os.path.basename(rel)
    gone = whiteout_target(base)
    if gone == "":
        for child in os.listdir(parent):
            _remove(os.path.join(parent, child))
        return
    if gone is not None:
        victim = os.path.join(parent, gone)
        if os.path.dirname(victim) != parent or not _inside(dest, victim) or victim == dest:
            raise ImageError(f"{member.name!r}: whiteout outside its own directory (refused)")
        _remove(victim)
        return
    if member.isdir():
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
            _remove(path)
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)
        os.chmod(path, stat.S_IMODE(member.mode))
        dirs.append((path, int(member.mtime)))
    elif member.isfile():
        if os.path.lexists(path):
            _remove(path)
        src = tar.extractfile(member)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, oci.CHUNK)
        os.chmod(path, stat.S_IMODE(member.mode))
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    elif member.issym():
        target = member.linkname
        if "\x00" in target or not target:
            raise ImageError(f"{rel!r}: symlink with an empty target or a NUL byte")
        if not target.startswith("/"):
            resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if resolved == ".." or resolved.startswith("../"):
                raise ImageError(f"{rel!r} -> {target!r}: symlink points outside the image")
        if os.path.lexists(path):
            _remove(path)
        os.symlink(target, path)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    elif member.islnk():
        target_rel = safe_relpath(member.linkname)
        if not target_rel:
            raise ImageError(f"{rel!r}: hard link to the image root")
        target = _parent_dirs_safe(dest, target_rel)
        if not _inside(dest, os.path.realpath(os.path.dirname(target))):
            raise ImageError(f"{rel!r}: hard link to {member.linkname!r} resolves outside the image")
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise ImageError(f"{rel!r}: hard link to {member.linkname!r}, which the layer does not hold") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{rel!r}: hard link to {member.linkname!r}, which is not a regular file")
        if os.path.lexists(path):
            _remove(path)
        os.link(target, path, follow_symlinks=False)
    else:
        raise ImageError(f"{rel!r}: device nodes, fifos and other special files are refused")
    if os.geteuid() == 0:
        os.lchown(path, member.uid, member.gid)
        if member.isfile() and member.mode & 0o6000:
            os.chmod(path, stat.S_IMODE(member.mode))   # chown clears setuid/setgid; put them back
