"""Backups: ``GET /v1/snapshot`` (admin) passes a barrier through the Raft log, then answers the applied state
in the backup file's envelope (raftctl/statemachine/backup.py, the codec the CLI reads and restores with).

Encoding the state takes seconds in a large cell (3.5 s for 100,000 placements in the 10,000-machine bed), and it
ran under the apply lock on the event loop: the leader's loop was held 2.2 s and its failover monitor woke late
(session 17). Now a forked child encodes the copy-on-write image of the state taken under the apply lock and
writes it to a pipe; this process only forks (tens of milliseconds under the lock) and reads the pipe on a
worker thread. Where there is no ``fork`` it is encoded here, as before.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any, Callable

from aiohttp import web

from raftctl.errors import RaftctlError
from raftctl.node.http import REPLICA, perm
from raftctl.node.raft.disk import write_all
from raftctl.statemachine.backup import take
from raftctl.statemachine.state import State


@perm("snapshot")
async def handler(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    await replica.barrier()  # linearizable: everything committed before this call is in the snapshot
    now = replica.clock.now_ms()   # the backup's taken_at: the replica's clock
    index, digest, body = await encoded(replica, replica.cfg.node_id, now)
    return web.Response(body=body, content_type="application/cbor",
                        headers={"X-Raftctl-Index": str(index), "X-Raftctl-Snapshot-Sha256": digest})


async def encoded(replica: Any, node: str, now: int) -> tuple[int, str, bytes]:
    """The backup of the applied state: its index, its state's sha256 and the encoded file."""
    if not hasattr(os, "fork"):
        b = replica.read(lambda s: take(s, node, now))
        return b.index, b.sha256, b.encode()

    def produce(state: State, w: int) -> None:
        b = take(state, node, now)
        write_all(w, json.dumps({"index": b.index, "sha256": b.sha256}).encode() + b"\n")
        write_all(w, b.encode())

    data = await _in_child(replica, produce)
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise RaftctlError("the snapshot could not be encoded (no header)", code="internal", http_status=500)
    meta = json.loads(head)
    return int(meta["index"]), str(meta["sha256"]), body


async def state_digest(replica: Any) -> tuple[int, str]:
    """(index, sha256 of the canonical state at that index): what ``GET /v1/status?hash=1`` reports. Encoding the
    state to hash it takes as long as a backup's (seconds in a large cell); it ran on the event loop under the
    apply lock for any reader token until session 26. Now a forked child hashes it, as a backup is encoded, and
    requests that arrive while one is computed share its answer (one child at a time per replica)."""
    running = replica.digest_inflight
    if running is None:
        running = replica.digest_inflight = asyncio.ensure_future(_digest(replica))
        running.add_done_callback(lambda _: setattr(replica, "digest_inflight", None))
    return await asyncio.shield(running)


async def _digest(replica: Any) -> tuple[int, str]:
    if not hasattr(os, "fork"):
        return replica.read(lambda s: (s.index, s.digest()))

    def produce(state: State, w: int) -> None:
        write_all(w, json.dumps({"index": state.index, "sha256": state.digest()}).encode())

    meta = json.loads(await _in_child(replica, produce))
    return int(meta["index"]), str(meta["sha256"])


async def _in_child(replica: Any, produce: Callable[[State, int], None]) -> bytes:
    """What ``produce(state, fd)`` writes, run in a child forked under the apply lock (its copy-on-write image of
    the state is the one at that moment); this process reads the pipe on a worker thread."""
    r, w = os.pipe()
    try:
        pid = replica.read(lambda s: _fork(s, produce, r, w))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(None, _read_all, r)
    except BaseException:   # the client went away (cancelled): the child must not wait on a full pipe
        _kill(pid)
        raise
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    if status != 0:
        raise RaftctlError(f"the state could not be encoded (encoder exit status {status})", code="internal",
                           http_status=500)
    return data


def _fork(state: State, produce: Callable[[State, int], None], r: int, w: int) -> int:
    """Fork a child that runs ``produce(state, w)`` and exits (call under the apply lock)."""
    pid = os.fork()
    if pid == 0:   # the child: no locks, no logging, no return into the server
        code = 1
        try:
            os.close(r)
            produce(state, w)
            code = 0
        finally:
            os._exit(code)
    return pid


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
