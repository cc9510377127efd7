"""Image blobs on every control replica: content-addressed files, never in the Raft log.

A blob pushed to one replica is verified against its sha256 digest, stored under
``DATA_DIR/blobs/sha256/<hex>``, and copied to the other replicas before the push
is acknowledged (a majority must hold it). A replica asked for a blob it lacks
fetches it from a peer and verifies it. The log holds only name -> digest, size.
The tag is the durability point: the leader commits PutImage only once the manifest,
its config and every layer are on a majority (copying them there if need be).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from typing import Any

import aiohttp
from aiohttp import web

from raftctl import oci
from raftctl.errors import NotFound, Unavailable, ValidationError
from raftctl.node.http import FORWARDED, REPLICA, body, encode, perm, read_mode, result_value, routes
from raftctl.oci import ImageError
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import list_to_wire

log = logging.getLogger("raftctl.blobs")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
MAX_BLOB = 4 << 30
CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
PEER_TIMEOUT = aiohttp.ClientTimeout(total=5)
COPY_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)


def blob_path(data_dir: str, digest: str) -> str:
    m = DIGEST_RE.match(digest)
    if not m:
        raise ValidationError("digest must be sha256:<64 hex>", field="digest")
    return os.path.join(data_dir, "blobs", "sha256", m.group(1))


async def _store(data_dir: str, digest: str, chunks: Any) -> int:
    """Write a stream to the store if and only if it hashes to ``digest``; return its size."""
    path = blob_path(data_dir, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_BLOB:
                    raise ValidationError(f"blob larger than {MAX_BLOB} bytes", field="body")
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if "sha256:" + h.hexdigest() != digest:
            raise ValidationError(f"content hashes to sha256:{h.hexdigest()}, not {digest}", field="digest",
                                  code="digest_mismatch")
        os.replace(tmp, path)
        return size
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _peers(replica: Any) -> list[str]:
    return replica.read(lambda s: [m["api"] for a, m in sorted(s.members.items())
                                   if m.get("api") and a != replica.cfg.raft])


@perm("images:write")
async def put_blob(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    digest = request.match_info["digest"]
    size = await _store(replica.cfg.data_dir, digest, request.content.iter_chunked(CHUNK))
    holders = 1
    if not request.headers.get(FORWARDED):
        peers = _peers(replica)
        for peer in peers:
            holders += await _copy_to(replica, request.headers["Authorization"], digest, peer)
        members = len(peers) + 1
        if holders <= members // 2:
            raise Unavailable(f"blob stored on {holders} of {members} replicas; a majority is needed")
    return encode(request, {"digest": digest, "size": size, "replicas": holders})


async def _fetch_from_peers(replica: Any, auth: str, digest: str) -> None:
    """Copy blob ``digest`` from the first peer that has it (verified by digest), if this replica lacks it.
    The request to the peer says it is forwarded, so the peer answers from its own store only."""
    if os.path.exists(blob_path(replica.cfg.data_dir, digest)):
        return
    for peer in _peers(replica):
        try:
            async with replica.http.get(f"{peer}/v1/images/blobs/{digest}",
                                        headers={"Authorization": auth, FORWARDED: replica.cfg.node_id}) as r:
                if r.status == 200:
                    await _store(replica.cfg.data_dir, digest, r.content.iter_chunked(CHUNK))
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, ValidationError) as exc:
            log.info("fetch of %s from %s failed: %s", digest, peer, exc)


@perm("read")
async def get_blob(request: web.Request) -> web.StreamResponse:
    replica = request.app[REPLICA]
    digest = request.match_info["digest"]
    path = blob_path(replica.cfg.data_dir, digest)
    # HEAD answers from this replica only: a pusher asking "do you have it?" re-pushes if not
    if request.method != "HEAD" and not request.headers.get(FORWARDED):
        await _fetch_from_peers(replica, request.headers["Authorization"], digest)
    if not os.path.exists(path):
        raise NotFound(f"no blob {digest}", field="digest")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                           "Docker-Content-Digest": digest})


@perm("images:write", write=True)
async def put_image(request: web.Request) -> web.Response:
    """Tag name -> manifest digest. Forwarded to the leader like any write; it commits the tag only once the
    manifest, its config and every layer are held and verified by a majority of replicas (see ensure_image)."""
    replica = request.app[REPLICA]
    name = request.match_info["name"]
    data = await body(request)
    digest = data.get("digest") if isinstance(data, dict) else None
    size = data.get("size", 0) if isinstance(data, dict) else 0
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ValidationError("digest must be sha256:<64 hex>", field="digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValidationError("size must be a non-negative integer", field="size")
    await ensure_image(replica, request.headers["Authorization"], digest)
    res = await replica.propose(c.PutImage(name=name, digest=digest, size=size))
    return encode(request, {"index": res.index, **result_value(res)}, index=res.index)


def _verify_file(path: str, digest: str) -> bool:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest() == digest


async def _holders(replica: Any, auth: str, digest: str) -> set[str]:
    """The peers (API URLs) whose own store holds ``digest`` (HEAD answers from a replica's store only, and a
    replica's store admits a blob only after hashing it). A peer that does not answer holds nothing."""
    async def head(peer: str) -> str | None:
        try:
            async with replica.http.head(f"{peer}/v1/images/blobs/{digest}", timeout=PEER_TIMEOUT,
                                         headers={"Authorization": auth, FORWARDED: replica.cfg.node_id}) as r:
                return peer if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("HEAD %s on %s failed: %s", digest, peer, exc)
            return None
    return {p for p in await asyncio.gather(*(head(p) for p in _peers(replica))) if p is not None}


async def _copy_to(replica: Any, auth: str, digest: str, peer: str) -> bool:
    path = blob_path(replica.cfg.data_dir, digest)
    try:
        with open(path, "rb") as f:
            async with replica.http.put(f"{peer}/v1/images/blobs/{digest}", data=f, timeout=COPY_TIMEOUT,
                                        headers={"Authorization": auth, FORWARDED: replica.cfg.node_id,
                                                 "Content-Type": "application/octet-stream"}) as r:
                return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.info("copy of %s to %s failed: %s", digest, peer, exc)
        return False


async def _ensure_blob(replica: Any, auth: str, digest: str, what: str) -> None:
    """Make blob ``digest`` held and verified by a majority of replicas (this one included): fetch it here
    from a peer if this replica lacks it (or holds a corrupt copy), then copy it to peers that lack it."""
    path = blob_path(replica.cfg.data_dir, digest)
    if os.path.exists(path) and not await asyncio.to_thread(_verify_file, path, digest):
        log.warning("local copy of %s does not hash to its digest: removed, fetching a good one", digest)
        os.unlink(path)
    await _fetch_from_peers(replica, auth, digest)
    if not os.path.exists(path):
        raise ValidationError(f"the {what} blob {digest} is on no replica: push it before tagging",
                              field="digest", code="blob_missing", details={"digest": digest})
    peers = _peers(replica)
    need = (len(peers) + 1) // 2 + 1
    holders = await _holders(replica, auth, digest)
    for peer in peers:
        if 1 + len(holders) >= need:
            break
        if peer not in holders and await _copy_to(replica, auth, digest, peer):
            holders.add(peer)
    if 1 + len(holders) < need:
        raise Unavailable(f"the {what} blob {digest} is on {1 + len(holders)} of {len(peers) + 1} replicas and "
                          "could not be copied to a majority; try again when more replicas are up",
                          field="digest", details={"digest": digest})


async def ensure_image(replica: Any, auth: str, digest: str) -> None:
    """The durability point of an image: its manifest, config and layers on a majority before it is tagged
    (a blob acknowledged by one replica's HEAD may never have reached a majority)."""
    await _ensure_blob(replica, auth, digest, "manifest")
    with open(blob_path(replica.cfg.data_dir, digest), "rb") as f:
        raw = f.read(MAX_MANIFEST + 1)
    try:
        if len(raw) > MAX_MANIFEST:
            raise ImageError(f"larger than {MAX_MANIFEST} bytes")
        m = oci.parse_manifest(raw)
    except ImageError as exc:
        raise ValidationError(f"{digest} is not an OCI image manifest: {exc}", field="digest") from None
    parts = dict.fromkeys([m["config"]["digest"], *(x["digest"] for x in m["layers"])])
    for d in parts:
        await _ensure_blob(replica, auth, d, "config" if d == m["config"]["digest"] else "layer")


@perm("read")
async def list_images(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    index = await read_mode(request, lambda s: s.table_index["images"])
    images = replica.read(lambda s: list_to_wire(v for _, v in sorted(s.images.items())))
    return encode(request, {"index": index, "images": images}, index=index)


def add_routes(app: web.Application) -> None:
    r = routes(app)
    r.add_put("/v1/images/blobs/{digest}", put_blob)
    r.add_get("/v1/images/blobs/{digest}", get_blob)
    r.add_get("/v1/images", list_images)
    r.add_put("/v1/images/{name:.+}", put_image)       # names may hold a slash (team/web:1)
