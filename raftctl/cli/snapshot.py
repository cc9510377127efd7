"""raftctl snapshot save|restore|inspect: back up the replicated state and seed a fresh cluster with it."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import click

from raftctl.cli.base import client
from raftctl.cli.output import emit, fail
from raftctl.errors import RaftctlError


def _write_private(path: str, data: bytes) -> None:
    """Write ``path`` atomically with mode 0600 (a snapshot holds token hashes)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
        raise


def _summary_text(s: dict[str, Any]) -> str:
    saved = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s["saved_at"] / 1000)) if s["saved_at"] else "?"
    return (f"index {s['index']}, sha256 {s['sha256']}, {s['bytes']} bytes, saved {saved} from {s['node'] or '?'}: "
            f"{s['jobs']} jobs, {s['placements']} placements, {s['machines']} machines, {s['tokens']} tokens, "
            f"{s['images']} images")


def register(cli: click.Group) -> None:
    @cli.group()
    def snapshot() -> None:
        """Back up the replicated state and restore it into a fresh cluster."""

    @snapshot.command("save")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.pass_context
    def save(ctx: click.Context, file: str) -> None:
        """Save a consistent snapshot of the cluster's state to FILE (needs an admin token)."""
        from raftctl.statemachine.backup import decode

        data = client(ctx).download("/v1/snapshot")
        backup = decode(data)  # verify before keeping it
        _write_private(file, data)
        summary = backup.summary()
        emit(ctx, {"file": file, **summary}, text=f"saved {file}: {_summary_text(summary)}")

    @snapshot.command("inspect")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.pass_context
    def inspect(ctx: click.Context, file: str) -> None:
        """Verify FILE and say what it holds."""
        from raftctl.statemachine.backup import decode

        summary = decode(_read(file)).summary()
        emit(ctx, {"file": file, **summary}, text=_summary_text(summary))

    @snapshot.command("restore")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--data-dir", required=True, type=click.Path(file_okay=False),
                  help="The new replica's data dir: empty, never started.")
    @click.option("--raft", "raft_addr", required=True, help="This replica's Raft host:port (as for raftctl server).")
    @click.option("--peer", "peers", multiple=True, help="Raft host:port of another replica of the new cluster.")
    @click.pass_context
    def restore(ctx: click.Context, file: str, data_dir: str, raft_addr: str, peers: tuple[str, ...]) -> None:
        """Seed an empty data dir with FILE's state, as one replica of a new cluster.

        Run it for every replica of the new cluster with the same FILE and the same set of addresses,
        then start each with `raftctl server --data-dir D --raft ... --peer ...`. Raft membership and
        the leader epoch of the old cluster are not restored; jobs, machines, placements, images,
        tokens, discovery and every index are.
        """
        from raftctl.node.raft import seed_data_dir
        from raftctl.statemachine.backup import decode, for_new_cluster

        for flag, addr in [("--raft", raft_addr)] + [("--peer", p) for p in peers]:
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                fail(f"{flag}: {addr!r} is not host:port")
        backup = decode(_read(file))
        state = for_new_cluster(backup)
        try:
            path = seed_data_dir(os.path.abspath(data_dir), state, [raft_addr, *peers])
        except FileExistsError as exc:
            raise RaftctlError(str(exc), field="--data-dir", code="conflict") from None
        summary = backup.summary()
        seeded = hashlib.sha256(state).hexdigest()
        emit(ctx, {"file": file, "data_dir": data_dir, "snapshot": path, "seeded_sha256": seeded, **summary},
             text=f"seeded {data_dir} from {file}: {_summary_text(summary)}; start the replica with "
                  f"`raftctl server --data-dir {data_dir} --raft {raft_addr}"
                  + "".join(f" --peer {p}" for p in peers) + " ...`")
