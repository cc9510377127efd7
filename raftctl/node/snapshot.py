"""Backups: ``GET /v1/snapshot`` (admin) passes a barrier through the Raft log, then answers the applied state
in the backup file's envelope (raftctl/statemachine/backup.py, the codec the CLI reads and restores with).
"""
from __future__ import annotations

from aiohttp import web

from raftctl.node.http import REPLICA, perm
from raftctl.statemachine.backup import take


@perm("snapshot")
async def handler(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    await replica.barrier()  # linearizable: everything committed before this call is in the snapshot
    now = replica.clock.now_ms()   # the backup's taken_at: the replica's clock
    backup = replica.read(lambda s: take(s, replica.cfg.node_id, now))
    return web.Response(body=backup.encode(), content_type="application/cbor",
                        headers={"X-Raftctl-Index": str(backup.index), "X-Raftctl-Snapshot-Sha256": backup.sha256})
