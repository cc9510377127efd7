"""The backup file's codec: a consistent snapshot of the replicated state in a small CBOR envelope::

    {"format": "raftctl-snapshot", "version": 1, "index": N, "sha256": "<hex>", "saved_at": <ms>,
     "node": "n1", "state": <canonical state snapshot bytes>}

``sha256`` is the hash of ``state``, which is exactly what ``GET /v1/status?hash=1`` reports as
``state_hash`` on every replica that has applied the same log. It lives beside the state it encodes (pure:
CBOR through the gate and a hash, no I/O): the node serves it (raftctl/node/snapshot.py, ``GET /v1/snapshot``)
and the CLI reads and restores it (``raftctl snapshot``) without importing the node.

Restoring seeds the empty data dir of every replica of a new cluster with the same state (see
:func:`raftctl.node.raft.seed_data_dir`). The tables that belong to the old cluster rather than to the data
are reset first (:func:`for_new_cluster`): Raft membership (the new replicas register themselves) and the
leader epoch (the new cluster's Raft terms start again at 1, and its first leader must be able to claim an
epoch). Jobs, versions, placements, machines, images, tokens, discovery, events and every resource's index
are kept, so ``?cas=N`` and blocking queries keep their meaning.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

from raftctl import gate
from raftctl.errors import ValidationError
from raftctl.statemachine.state import State

FORMAT = "raftctl-snapshot"
# The envelope passes the gate (no tags, bounded depth and entries); its state is bytes, at most 4 GiB.
ENVELOPE_LIMITS = gate.Limits(max_bytes=4 << 30, max_items=64, max_nodes=256, bytes_ok=True)
VERSION = 1


@dataclass(frozen=True)
class Backup:
    """A decoded, verified backup file."""

    index: int
    sha256: str
    saved_at: int
    node: str
    state: bytes

    def encode(self) -> bytes:
        return cbor2.dumps({"format": FORMAT, "version": VERSION, "index": self.index, "sha256": self.sha256,
                            "saved_at": self.saved_at, "node": self.node, "state": self.state}, canonical=True)

    def summary(self) -> dict[str, Any]:
        s = State.restore(self.state)
        return {"index": self.index, "sha256": self.sha256, "saved_at": self.saved_at, "node": self.node,
                "bytes": len(self.state), "jobs": len(s.jobs), "placements": len(s.placements),
                "machines": len(s.machines), "tokens": len(s.tokens), "images": len(s.images)}


def take(state: State, node: str, now_ms: int) -> Backup:
    """The backup of ``state`` (call under the apply lock)."""
    raw = state.snapshot()
    return Backup(index=state.index, sha256=hashlib.sha256(raw).hexdigest(), saved_at=now_ms, node=node, state=raw)


def decode(data: bytes) -> Backup:
    """Parse and verify a backup file: format, version, the state's sha256, and that the state restores."""
    try:
        obj = gate.decode_cbor(data, limits=ENVELOPE_LIMITS, root="file")
    except ValidationError as exc:
        raise ValidationError(f"not a raftctl snapshot ({exc.message})", field="file") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValidationError("not a raftctl snapshot (no format: raftctl-snapshot)", field="file")
    if obj.get("version") != VERSION:
        raise ValidationError(f"snapshot version {obj.get('version')!r} is not supported (this raftctl reads "
                              f"version {VERSION})", field="file")
    state, digest = obj.get("state"), obj.get("sha256")
    if not isinstance(state, bytes) or not isinstance(digest, str):
        raise ValidationError("snapshot has no state or sha256", field="file")
    actual = hashlib.sha256(state).hexdigest()
    if actual != digest:
        raise ValidationError(f"snapshot is corrupt: its state hashes to {actual}, not {digest}", field="file")
    try:
        State.restore(state)
    except Exception as exc:
        raise ValidationError(f"snapshot state does not restore: {exc}", field="file") from None
    return Backup(index=int(obj.get("index", 0)), sha256=digest, saved_at=int(obj.get("saved_at", 0)),
                  node=str(obj.get("node", "")), state=state)


def for_new_cluster(backup: Backup) -> bytes:
    """The state a fresh cluster starts from: the backup less what belongs to the old cluster."""
    s = State.restore(backup.state)
    s.members = {}
    s.epoch = 0
    s.epoch_node = ""
    return s.snapshot()
