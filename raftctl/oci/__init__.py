"""OCI image layout: deterministic layer tars, config, manifest, index; digest checks.

Layers are uncompressed tars (media type ...layer.v1.tar) so that the same directory
always gives the same bytes: entries sorted, mtime 0, uid/gid 0, no user names.
Imported layouts may also carry gzip layers (...layer.v1.tar+gzip).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from typing import IO, Any, Iterator

from raftctl import gate
from raftctl.errors import ValidationError

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPES = (MT_LAYER, MT_LAYER_GZIP)
REF_NAME = "org.opencontainers.image.ref.name"
BASE_LABEL = "raftctl.base"
CHUNK = 1 << 20


class ImageError(Exception):
    """A malformed, tampered or unsafe image."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def split_digest(digest: str) -> str:
    """The hex part of ``sha256:<64 hex>``; anything else is refused (it names a path)."""
    if not isinstance(digest, str):
        raise ImageError(f"{str(digest)[:80]!r} is not a sha256 digest")
    alg, sep, hexpart = digest.partition(":")
    if alg != "sha256" or not sep or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"{digest!r} is not a sha256 digest")
    return hexpart


def descriptor(media_type: str, data_digest: str, size: int, annotations: dict[str, str] | None = None) -> dict:
    d: dict[str, Any] = {"mediaType": media_type, "digest": data_digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def walk_sorted(root: str) -> Iterator[tuple[str, str]]:
    """(relative name, absolute path) for everything under ``root``, depth-first in byte order."""
    def rec(rel: str) -> Iterator[tuple[str, str]]:
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full), key=os.fsencode):
            r = f"{rel}/{name}" if rel else name
            p = os.path.join(root, r)
            yield r, p
            if stat.S_ISDIR(os.lstat(p).st_mode):
                yield from rec(r)
    yield from rec("")


def write_layer(src_dir: str, out: IO[bytes]) -> None:
    """A deterministic tar of ``src_dir``. Device nodes, fifos and sockets are refused."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in walk_sorted(src_dir):
            st = os.lstat(path)
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise ImageError(f"{rel}: only files, directories and symlinks go into an image")


def image_config(layer_digest: str, base: str, env: list[str] | None = None) -> dict:
    return {"architecture": "amd64", "os": "linux",
            "config": {"Env": env or [], "Labels": {BASE_LABEL: base}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}


def manifest(config_desc: dict, layer_descs: list[dict], base: str) -> dict:
    return {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc, "layers": layer_descs,
            "annotations": {BASE_LABEL: base}}


def index(manifest_desc: dict) -> dict:
    return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [manifest_desc]}


MANIFEST_LIMITS = gate.Limits(max_bytes=4 << 20)
"""A manifest is decoded through the gate (it comes from whoever pushed the image; the leader reads it)."""


def parse_manifest(data: bytes) -> dict:
    try:
        m = gate.decode_json(data, limits=MANIFEST_LIMITS, root="manifest")
    except ValidationError as exc:
        raise ImageError(f"manifest is not JSON a manifest can hold: {exc}") from None
    if not isinstance(m, dict) or m.get("schemaVersion") != 2 or not isinstance(m.get("layers"), list) \
            or not isinstance(m.get("config"), dict) or not all(isinstance(x, dict) for x in m["layers"]):
        raise ImageError("manifest is not an OCI image manifest (schemaVersion 2 with a config and layers)")
    for layer in m["layers"]:
        if layer.get("mediaType") not in LAYER_TYPES:
            raise ImageError(f"layer media type {layer.get('mediaType')!r} is not supported")
        split_digest(layer.get("digest", ""))
    split_digest((m.get("config") or {}).get("digest", ""))
    return m


class HashingReader(io.RawIOBase):
    """Reads through a file while hashing every byte, so a layer is verified as it is unpacked."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        n = len(data)
        b[:n] = data
        self.h.update(data)
        self.size += n
        return n

    def drain(self) -> str:
        for _chunk in iter(lambda: self.read(CHUNK), b""):
            pass
        return "sha256:" + self.h.hexdigest()
