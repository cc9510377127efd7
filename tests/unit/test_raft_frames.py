"""A Raft port's bounds before a peer proves the cluster secret (raftctl/node/raft/frames.py), on real loopback
sockets and pysyncobj's own poller: what an unproven peer may announce, when it counts as proven, the read budget
per readable event and the cap on connections waiting to prove it."""
from __future__ import annotations

import pickle
import socket
import struct
import time
from typing import Any, Callable

import pysyncobj.tcp_server as pserver
import pysyncobj.transport as ptransport
import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE

from raftctl.node import raft  # noqa: F401  (installs frames.py, as every replica does)
from raftctl.node.raft import frames
from raftctl.node.raft.wire import stored

FERNET = getEncryptor("the cluster secret")


def frame(message: Any, fernet: Any = None) -> bytes:
    """One frame as a peer sends it (pysyncobj's TcpConnection.send)."""
    data = stored(pickle.dumps(message))
    if fernet is not None:
        data = fernet.encrypt_at_time(data, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


class Port:
    """A listening socket whose accepted connections become BoundedConnections on one pysyncobj poller."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.poller = createPoller("auto")
        self.peers: list[socket.socket] = []

    def accept(self, fernet: Any = None) -> tuple[frames.BoundedConnection, socket.socket, list[Any]]:
        peer = socket.create_connection(self.listener.getsockname())
        self.peers.append(peer)
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        conn = frames.BoundedConnection(poller=self.poller, socket=sock, timeout=10.0, keepalive=(2, 1, 3))
        conn.encryptor = fernet
        got: list[Any] = []
        conn.setOnMessageReceivedCallback(got.append)
        return conn, peer, got

    def poll_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.poller.poll(0.01)
        assert done()

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.listener.close()


@pytest.fixture
def port():
    p = Port()
    yield p
    p.close()


def closed(conn: frames.BoundedConnection) -> bool:
    return conn.state == CONNECTION_STATE.DISCONNECTED


def test_pysyncobj_builds_bounded_connections_for_both_directions() -> None:
    assert pserver.TcpConnection is frames.BoundedConnection
    assert ptransport.TcpConnection is frames.BoundedConnection


@pytest.mark.parametrize("name,head,why", [
    ("2 GiB announced", struct.pack("i", 0x7FFFFFFF), "before proving the secret"),
    ("one byte over the bound", struct.pack("i", frames.PRE_AUTH_FRAME + 1), "before proving the secret"),
    ("negative length", struct.pack("i", -5), "negative frame length"),
])
def test_an_unproven_peer_is_dropped_on_the_frame_length_alone(port: Port, name: str, head: bytes,
                                                               why: str) -> None:
    conn, peer, got = port.accept(FERNET)
    peer.sendall(head)
    port.poll_until(lambda: closed(conn))
    assert why in (conn.dropped or ""), name
    assert got == []


def test_a_stream_after_a_huge_announcement_is_cut_off_and_the_poller_is_not_held(port: Port) -> None:
    conn, peer, _ = port.accept(FERNET)
    peer.setblocking(False)
    sent = 0
    head = struct.pack("i", 0x7FFFFFFF)
    peer.send(head)
    started = time.monotonic()
    polls = 0
    chunk = b"A" * (1 << 16)
    with pytest.raises(OSError):   # the port closes: the peer's sends fail (reset or broken pipe)
        while time.monotonic() - started < 10:
            try:
                sent += peer.send(chunk)
            except BlockingIOError:
                pass
            port.poller.poll(0)
            polls += 1
    assert closed(conn)
    print(f"sent {sent} bytes in {polls} polls before the port closed")
    assert sent < 64 << 20   # the kernel's buffers, not the replica's memory


def test_a_frame_of_garbage_within_the_bound_is_dropped_when_it_does_not_decrypt(port: Port) -> None:
    conn, peer, got = port.accept(FERNET)
    junk = b"x" * 1000
    peer.sendall(struct.pack("i", len(junk)) + junk)
    port.poll_until(lambda: closed(conn))
    assert got == [] and not conn.proven


def test_the_handshake_proves_the_secret_and_then_large_frames_are_read(port: Port) -> None:
    # incoming side of pysyncobj's handshake: the peer's key (proves nothing: anyone may replay a recorded one),
    # then messages carrying the fresh key this side sent back
    conn, peer, got = port.accept(FERNET)
    peer.sendall(frame(b"k1" * 16, FERNET))
    port.poll_until(lambda: len(got) == 1)
    assert not conn.proven
    conn.sendRandKey, conn.recvRandKey = got[0], b"k2" * 16   # what the transport does on the first message
    big = b"e" * (200 << 10)
    peer.sendall(frame((b"k2" * 16, "127.0.0.1:7001"), FERNET) + frame((b"k2" * 16, big), FERNET))
    port.poll_until(lambda: len(got) == 3)
    assert conn.proven and got[1:] == ["127.0.0.1:7001", big]
    assert not closed(conn)


def test_a_replayed_first_message_does_not_lift_the_bound(port: Port) -> None:
    conn, peer, got = port.accept(FERNET)
    peer.sendall(frame(b"k1" * 16, FERNET))
    port.poll_until(lambda: len(got) == 1)
    conn.recvRandKey = b"k2" * 16
    peer.sendall(frame((b"k2" * 16, b"e" * (100 << 10)), FERNET))   # a proof, but larger than the bound
    port.poll_until(lambda: closed(conn))
    assert "before proving the secret" in (conn.dropped or "")


def test_without_a_secret_the_first_decoded_message_proves(port: Port) -> None:
    conn, peer, got = port.accept(None)
    big = b"e" * (100 << 10)
    peer.sendall(frame("127.0.0.1:7001") + frame(big))
    port.poll_until(lambda: len(got) == 2)
    assert conn.proven and got == ["127.0.0.1:7001", big]


def test_one_readable_event_reads_at_most_the_budget(port: Port) -> None:
    conn, peer, got = port.accept(None)
    peer.sendall(frame("127.0.0.1:7001"))
    port.poll_until(lambda: conn.proven)
    message = frame(b"e" * (4 << 20))
    peer.setblocking(False)
    sent = peer.send(message)   # as much as the kernel takes at once
    reads = []
    while len(got) < 2:
        if sent < len(message):
            try:
                sent += peer.send(message[sent:])
            except BlockingIOError:
                pass
        before = len(conn._TcpConnection__readBuffer)  # type: ignore[attr-defined]
        port.poller.poll(0.01)
        if len(got) < 2:
            reads.append(len(conn._TcpConnection__readBuffer) - before)  # type: ignore[attr-defined]
    assert got[1] == b"e" * (4 << 20)
    assert max(reads) <= frames.READ_BUDGET + (1 << 16)   # the budget, plus at most one recv past it
    assert len(reads) >= (4 << 20) // (frames.READ_BUDGET + (1 << 16))


def test_the_oldest_of_too_many_waiting_connections_is_dropped(port: Port) -> None:
    proven, peer, _ = port.accept(None)
    peer.sendall(frame("127.0.0.1:7001"))
    port.poll_until(lambda: proven.proven)
    waiting = [port.accept(FERNET)[0] for _ in range(frames.PRE_AUTH_CONNECTIONS + 6)]
    assert [closed(c) for c in waiting] == [True] * 6 + [False] * frames.PRE_AUTH_CONNECTIONS
    assert all("waiting to prove" in (c.dropped or "") for c in waiting[:6])
    assert not closed(proven)   # a proven connection is not counted
    waiting[6].disconnect()     # a closed one leaves the count: the next newcomer drops nobody
    newcomer = port.accept(FERNET)[0]
    assert not any(closed(c) for c in waiting[7:]) and not closed(newcomer)


def test_the_raft_port_queues_a_burst_of_connections_the_tick_thread_has_not_accepted_yet() -> None:
    # pysyncobj listens with a backlog of 5: the kernel dropped the SYN of the 7th connection not yet accepted,
    # and its connect waited for the retransmission (1 s, then 3 s ...). Nothing accepts here: the handshakes
    # the kernel completes on its own are the queue's length.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = pserver.TcpServer(createPoller("auto"), "127.0.0.1", port, onNewConnection=lambda conn: None)
    server.bind()
    clients = [socket.socket() for _ in range(60)]
    try:
        for c in clients:
            c.setblocking(False)
            assert c.connect_ex(("127.0.0.1", port)) in (0, 115)   # EINPROGRESS
        deadline = time.monotonic() + 0.5
        done: set[int] = set()
        while time.monotonic() < deadline and len(done) < len(clients):
            for i, c in enumerate(clients):
                if i not in done and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    try:
                        c.getpeername()
                        done.add(i)
                    except OSError:
                        pass
            time.sleep(0.01)
        assert len(done) == len(clients) <= frames.ACCEPT_BACKLOG
    finally:
        for c in clients:
            c.close()
        server.unbind()


@pytest.mark.parametrize("bounded", [True, False], ids=["raftctl", "pysyncobj"])
def test_what_the_socket_did_not_take_goes_out_without_another_send(port: Port, bounded: bool) -> None:
    # pysyncobj's send() writes what the socket takes and keeps the rest until the next send() on that connection:
    # a sender that then goes quiet (a follower's proposal, a snapshot's last chunk) left it there. raftctl's
    # connection asks the poller for writability while anything is left.
    import pysyncobj.tcp_connection as ptcp
    cls = frames.BoundedConnection if bounded else ptcp.TcpConnection
    sender = cls(port.poller, sendBufferSize=1 << 16, recvBufferSize=1 << 16)
    assert sender.connect("127.0.0.1", port.listener.getsockname()[1])
    peer, _ = port.listener.accept()
    peer.setblocking(False)
    port.peers.append(peer)
    port.poll_until(lambda: sender.state == CONNECTION_STATE.CONNECTED)
    sender.send(b"hello")   # sent whole; the next writable event finds nothing left and stops asking for more
    for _ in range(5):
        port.poller.poll(0.01)
    sender.send(b"m" * (4 << 20))   # one message, far more than the kernel buffers hold
    want = 4 << 20   # the message's bytes; the frames are a few hundred more
    got = 0
    deadline = time.monotonic() + (5 if bounded else 1)
    while got < want and time.monotonic() < deadline:
        port.poller.poll(0.01)
        try:
            while chunk := peer.recv(1 << 20):
                got += len(chunk)
        except BlockingIOError:
            pass
    if bounded:
        assert got >= want and sender.getSendBufferSize() == 0
    else:
        assert got < want and sender.getSendBufferSize() > 0   # pysyncobj alone: stuck until it sends again
    sender.disconnect()


def test_one_readable_event_accepts_every_waiting_connection_up_to_the_bound() -> None:
    # pysyncobj accepted one connection per readable event of its listening socket, so the queue filled whenever
    # connections came faster than the tick thread went round
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    poller = createPoller("auto")
    accepted: list[Any] = []
    server = pserver.TcpServer(poller, "127.0.0.1", port, onNewConnection=accepted.append)
    server.bind()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(frames.ACCEPTS_PER_EVENT + 6)]
    try:
        poller.poll(1.0)   # one readable event of the listening socket
        assert len(accepted) == frames.ACCEPTS_PER_EVENT
        poller.poll(1.0)
        assert len(accepted) == len(clients)
    finally:
        for conn in accepted:
            conn.disconnect()
        for c in clients:
            c.close()
        server.unbind()
