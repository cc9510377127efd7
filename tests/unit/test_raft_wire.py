"""Raft messages on the wire (raftctl/node/raft/wire.py): pysyncobj's TcpConnection sends zlib's stored form
instead of compressing each message, and still reads a peer that compresses (an older raftctl, plain pysyncobj);
messages and entries' commands are pickled with protocol 4, and protocol 2 (what pysyncobj and older raftctl
replicas write) is still read."""
from __future__ import annotations

import pickle
import socket
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import createPoller
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.tcp_connection import TcpConnection

from raftctl.node import raft  # noqa: F401  (installs wire.py's framing, as every replica does)
from raftctl.node.raft.wire import PICKLE_PROTOCOL, STORED_BLOCK, ZLIB_HEADER, Pickle, stored
from tests.unit.test_raft_group_commit import _replicating
from tests.unit.test_raft_replication import _leader, handle  # noqa: F401


@pytest.mark.parametrize("size,blocks", [
    (0, 1), (1, 1), (700, 1), (STORED_BLOCK - 1, 1), (STORED_BLOCK, 1), (STORED_BLOCK + 1, 2),
    (2 * STORED_BLOCK, 2), (2 * STORED_BLOCK + 1, 3), (1 << 20, 17),
])
def test_stored_streams_decompress_to_their_data_at_every_block_boundary(size: int, blocks: int) -> None:
    data = bytes(i * 7 % 251 for i in range(size))
    framed = stored(data)
    assert zlib.decompress(framed) == data
    assert framed[:2] == ZLIB_HEADER
    assert len(framed) == 2 + 5 * blocks + size + 4   # header, one 5-byte head per block, the data, Adler-32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * STORED_BLOCK))
def test_any_bytes_survive_the_stored_form(data: bytes) -> None:
    assert zlib.decompress(stored(data)) == data


def test_pysyncobj_connections_send_the_stored_form_whatever_level_they_ask() -> None:
    import pysyncobj.tcp_connection as ptcp
    assert ptcp.zlib.compress(b"abc" * 100, 3) == stored(b"abc" * 100)
    assert ptcp.zlib.decompress(zlib.compress(b"abc" * 100, 3)) == b"abc" * 100


class _Pair:
    """A TcpConnection (with the Fernet encryptor RaftNode's password gives) whose peer is a raw socket."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.poller = createPoller("auto")
        self.fernet = getEncryptor("the cluster secret")
        self.got: list[Any] = []
        self.conn = TcpConnection(self.poller, onMessageReceived=self.got.append, keepalive=(2, 1, 3))
        self.conn.encryptor = self.fernet
        assert self.conn.connect("127.0.0.1", self.listener.getsockname()[1])
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(5)

    def poll_until(self, done: Any) -> None:
        deadline = time.monotonic() + 5
        while not done() and time.monotonic() < deadline:
            self.poller.poll(0.05)
        assert done()

    def read_frame(self) -> bytes:
        buf = b""
        while len(buf) < 4 or len(buf) - 4 < struct.unpack("i", buf[:4])[0]:
            self.poll_until(lambda: True)   # lets the connection flush what it buffered
            try:
                buf += self.peer.recv(1 << 20)
            except socket.timeout:
                pass
        return buf[4:4 + struct.unpack("i", buf[:4])[0]]

    def close(self) -> None:
        self.conn.disconnect()
        self.peer.close()
        self.listener.close()


def test_a_message_leaves_in_stored_blocks_and_an_older_peers_compressed_one_is_read() -> None:
    pair = _Pair()
    try:
        pair.poll_until(lambda: pair.conn.state == 2)   # CONNECTION_STATE.CONNECTED
        message = {"type": "append_entries", "term": 5, "commit_index": 1000, "prevLogIdx": 1000,
                   "prevLogTerm": 5, "entries": [(b"\x00" + bytes(range(256)) * 4, 1001, 5)]}
        pair.conn.send(message)
        plain = pair.fernet.decrypt(pair.read_frame())
        assert plain[:2] == ZLIB_HEADER and plain[2] & 0b110 == 0   # BTYPE 00: stored, not deflated
        assert zlib.decompress(plain)[:2] == b"\x80\x04"           # pickle protocol 4
        assert pickle.loads(zlib.decompress(plain)) == message

        # what a replica of an older raftctl sends: pysyncobj's own level-3 compression of a protocol 2 pickle,
        # encrypted the same way
        older = pair.fernet.encrypt_at_time(zlib.compress(pickle.dumps(message, 2), 3), int(time.monotonic()))
        pair.peer.sendall(struct.pack("i", len(older)) + older)
        pair.poll_until(lambda: bool(pair.got))
        assert pair.got == [message]
    finally:
        pair.close()


# An AppendEntries carrying three entries whose commands hold 300 bytes of CBOR each (raftctl's entries are CBOR).
_CBOR = bytes(range(256)) + bytes(range(44))


def _append(dumps: Any) -> dict[str, Any]:
    return {"type": "append_entries", "term": 3, "commit_index": 1234, "prevLogIdx": 1234, "prevLogTerm": 3,
            "entries": [(b"\x00" + dumps((0, (_CBOR,), {})), 1235 + i, 3) for i in range(3)]}


_APPEND = _append(pysyncobj_pickle.dumps)


@pytest.mark.parametrize("value", [
    _APPEND, (0, (_CBOR,), {}), ["add", "127.0.0.1:7004", None], {"type": "request_vote", "term": 7},
    {"type": "next_node_idx", "success": True, "reset": False, "term": 3, "next_node_idx": 1238, "seq": 12},
])
def test_messages_and_commands_pickle_with_protocol_4_and_protocol_2_still_reads(value: Any) -> None:
    import pysyncobj.syncobj as psyncobj
    import pysyncobj.tcp_connection as ptcp
    assert ptcp.pickle is Pickle and psyncobj.pickle is Pickle   # wire.install(), as every replica runs
    data = Pickle.dumps(value)
    assert data[:2] == bytes([0x80, PICKLE_PROTOCOL]) and Pickle.loads(data) == value
    older = pysyncobj_pickle.dumps(value)     # pysyncobj's own: what an older raftctl sent and journaled
    assert older[:2] == b"\x80\x02" and Pickle.loads(older) == value


def test_bytes_are_pickled_as_they_are_not_as_latin_1_text() -> None:
    """Protocol 2 writes a byte above 0x7F as two (the UTF-8 of its latin-1 text), once in the entry's command and
    again in the message that carries it: 2,480 bytes against 1,133 here (the command 504 against 326)."""
    assert len(Pickle.dumps(_append(Pickle.dumps))) < 0.5 * len(pysyncobj_pickle.dumps(_APPEND))
    assert len(Pickle.dumps((0, (_CBOR,), {}))) < 0.7 * len(pysyncobj_pickle.dumps((0, (_CBOR,), {})))


def test_a_proposed_entry_is_journaled_and_sent_with_protocol_4(handle: Any) -> None:  # noqa: F811
    h = handle(True)
    _leader(h)
    _replicating(h)
    mark = len(h.transport.sent)
    h.node.apply_entry(_CBOR)
    h.node.doTick(0.0)
    entry = h.log[-1][0]
    assert entry[1:3] == b"\x80\x04"          # after pysyncobj's one-byte command type
    assert Pickle.loads(entry[1:])[1] == (_CBOR,)
    sent = [m for _, m in h.transport.sent[mark:] if m["type"] == "append_entries" and m["entries"]]
    assert len(sent) == 2 and all(m["entries"][-1][0] == entry for m in sent)   # one to each follower
