"""Raft connections: bounds on what a Raft port reads before the peer has proven it holds the cluster secret,
and sending what the socket did not take at once.

pysyncobj's TcpConnection reads a 4-byte frame length, then buffers until that many bytes have arrived, and only
then decrypts (Fernet: the HMAC proves the sender holds the secret). Its read loop also drains the socket before
parsing, appending each 8 KiB ``recv`` to one ``bytes`` (a copy of everything read so far). So anyone who could
reach a replica's Raft port could announce a 2 GiB frame and stream: measured on this 2-core machine, 52 MiB sent
to the leader for 20 s kept its tick thread copying, every write answered 503 and another replica took over
(``tests/integration/test_raft_port_hostile.py``).

``BoundedConnection`` replaces pysyncobj's TcpConnection (in ``pysyncobj.tcp_server``, which makes incoming
connections, and ``pysyncobj.transport``, which makes outgoing ones):

* **Before the peer has proven the secret** its next frame may be at most ``PRE_AUTH_FRAME`` bytes, or the
  connection is dropped as soon as the frame's length is read. What a peer sends then is a 32-byte random key and
  its address (~200 bytes encrypted each); a frame that does not decrypt drops the connection once it is in, so
  an unproven connection buffers at most one such frame and one read budget. Proven means: a message decoded that carried this connection's own
  random key (``recvRandKey``: a fresh one per connection, so a replayed recording does not count). Without a
  secret (``--insecure-dev``) the first decoded message counts.
* **At most ``PRE_AUTH_CONNECTIONS`` incoming connections per replica wait to prove it**; one more drops the
  oldest waiting (a peer's handshake takes one round trip, an idle flood does not hold the port).
* **A frame length below 0 drops the connection** at any time (pysyncobj would slice with it).
* **One readable event reads at most ``READ_BUDGET`` bytes**, then the tick thread goes on (the poller is
  level-triggered: the rest is read on the next tick), so no peer holds the thread that sends heartbeats.

* **The port's accept queue holds ``ACCEPT_BACKLOG`` connections**, not pysyncobj's 5, and a readable event
  accepts up to ``ACCEPTS_PER_EVENT`` of them, not one: connections arriving faster than the tick thread accepted
  them overflowed the queue, and the kernel dropped the SYN of the next one, a peer's reconnect included, which
  retried only after 1 s (then 3 s, 7 s ...). Measured: 300 connects one after another took 44 s (the kernel's
  ListenOverflows counter rose); with the longer queue alone 1.0 s (one overflow in 300); with both 0.02 s, and
  1,000 in a row 1.09 s (one overflow: a flood can still outpace the tick thread). Session 34, a 128-deep queue
  against a 1,024-deep one on a 3-replica cluster, connects held open, to the leader's port: 1,000 in a row took
  2.09-5.13 s (2-5 overflows) against 0.07-0.08 s (none), 3,000 in a row 4.33-12.33 s (4-12) against
  0.17-1.13 s (0-1).

* **What the socket did not take is sent when it can take more.** pysyncobj's ``send`` writes what the socket
  takes and keeps the rest until the next ``send`` on that connection (it asks the poller for writability only
  while connecting and while a flush it started from that event is unfinished). A sender that then goes quiet
  left the rest in its buffer. Measured with one pysyncobj poller, 41 MiB in 64 KiB messages from a sender that
  waits for its buffer to drain: 2.1 MiB/s (stalled) with pysyncobj's connection, 60-72 MiB/s with this one.
  raftctl's leader sends a heartbeat every 75 ms, so in a cluster the rest waited at most that long; no change
  was measured there (900 KiB job PUTs: p50 54 ms through the leader and 67 ms through a follower, before and
  after).

* **A link gives up on a peer that stopped acknowledging within ``USER_TIMEOUT_MS``** (TCP_USER_TIMEOUT, set
  with pysyncobj's keepalive on every Raft socket it creates or accepts). pysyncobj gives up a connect attempt
  only after connectionTimeout (60 s here, to keep idle links) and a link with unacknowledged data only when TCP's
  retransmissions give up (minutes). Across a partition that heals, the pending SYN or segment is retried on the
  kernel's backoff (1, 2, 4, 8, 16 s ...), so a healed replica stayed cut off for up to ~30 s (jepsen-style seed
  2: 17 s after a 35 s leader isolation). With the bound the socket errors out, pysyncobj drops it and reconnects
  within connectionRetryTime.

After the proof a peer is trusted: it holds the secret that lets it run code as the control plane (pickles,
docs/security.md), and its frames are not bounded here.
"""
from __future__ import annotations

import logging
import select
import socket
import struct
import weakref
from collections import OrderedDict
from typing import Any

import pysyncobj.tcp_connection as ptcp
import pysyncobj.tcp_server as pserver
import pysyncobj.transport as ptransport

log = logging.getLogger(__name__)

PRE_AUTH_FRAME = 16 << 10
PRE_AUTH_CONNECTIONS = 64
READ_BUDGET = 256 << 10
ACCEPT_BACKLOG = 1024   # capped by net.core.somaxconn (4096 by default since Linux 5.4)
ACCEPTS_PER_EVENT = 64
USER_TIMEOUT_MS = 2500   # shorter than a round of the kernel's backoff, so a healed link comes back in seconds

_LENGTH = struct.Struct("i")   # pysyncobj's frame header: native int (signed, 4 bytes)

# connections dropped in this process, by reason (/metrics: raftctl_raft_port_dropped)
DROPPED: dict[str, int] = {"frame_too_large": 0, "negative_length": 0, "waiting_evicted": 0, "undecryptable": 0}
LOG_EVERY_S = 10.0   # a drop is logged at most this often (with the count since the last line): no log flood
_last_log = [-LOG_EVERY_S, 0]   # (when, drops not logged since)

# per poller (one per replica), the incoming connections still to prove the secret, oldest first
_waiting: weakref.WeakKeyDictionary[Any, OrderedDict[int, BoundedConnection]] = weakref.WeakKeyDictionary()


class BoundedConnection(ptcp.TcpConnection):
    """pysyncobj's TcpConnection with the bounds above."""

    def __init__(self, poller: Any, *args: Any, **kwargs: Any) -> None:
        self.proven = False
        self.dropped: str | None = None   # why this side dropped the connection last (tests and logs)
        super().__init__(poller, *args, **kwargs)
        if kwargs.get("socket") is not None:   # accepted by our Raft port
            waiting = _waiting.setdefault(poller, OrderedDict())
            waiting[id(self)] = self
            while len(waiting) > PRE_AUTH_CONNECTIONS:
                _, oldest = waiting.popitem(last=False)
                oldest._drop("waiting_evicted",
                             "one of more than %d connections waiting to prove the secret" % PRE_AUTH_CONNECTIONS)

    def setSockoptKeepalive(self) -> None:  # noqa: N802 (pysyncobj's name)
        """pysyncobj calls this on every Raft socket it creates or accepts: its keepalive, and the user timeout."""
        super().setSockoptKeepalive()
        sock = self._TcpConnection__socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)

    # -- reading ---------------------------------------------------------------------------------------------
    def _TcpConnection__tryReadBuffer(self) -> None:  # noqa: N802 (pysyncobj's name)
        budget = READ_BUDGET
        while budget > 0:
            before = len(self._TcpConnection__readBuffer)
            if not self._TcpConnection__processRead():
                break
            budget -= len(self._TcpConnection__readBuffer) - before
            why = self._violation()
            if why:
                self._drop(*why)
                return
        self._TcpConnection__lastReadTime = ptcp.monotonicTime()

    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802 (pysyncobj's name)
        why = self._violation()
        if why:
            self._drop(*why)
            return None
        proves = self.encryptor is None or self.recvRandKey is not None
        message = super()._TcpConnection__processParseMessage()
        if message is None and not self.proven and self.state == ptcp.CONNECTION_STATE.DISCONNECTED:
            DROPPED["undecryptable"] += 1   # pysyncobj dropped it: the frame did not decrypt or lacked our key
        elif message is not None and proves and not self.proven:
            self.proven = True
            self._unwait()
        return message

    def _violation(self) -> tuple[str, str] | None:
        """(reason, what) when the frame at the head of the buffer breaks a bound, else None."""
        buf = self._TcpConnection__readBuffer
        if len(buf) >= 4:
            length = _LENGTH.unpack_from(buf)[0]
            if length < 0:
                return "negative_length", "a negative frame length (%d)" % length
            if not self.proven and length > PRE_AUTH_FRAME:
                return ("frame_too_large",
                        "a frame of %d bytes before proving the secret (at most %d)" % (length, PRE_AUTH_FRAME))
        return None

    # -- writing ---------------------------------------------------------------------------------------------
    def send(self, message: Any) -> None:
        """pysyncobj's send; if the socket did not take it all, ask the poller to say when it can take more."""
        super().send(message)
        fileno = self._TcpConnection__fileno
        if (self._TcpConnection__writeBuffer and fileno is not None
                and self.state == ptcp.CONNECTION_STATE.CONNECTED):
            self._TcpConnection__poller.subscribe(fileno, self._TcpConnection__processConnection,
                                                  ptcp.POLL_EVENT_TYPE.READ | ptcp.POLL_EVENT_TYPE.WRITE
                                                  | ptcp.POLL_EVENT_TYPE.ERROR)

    # -- dropping --------------------------------------------------------------------------------------------
    def _drop(self, reason: str, why: str) -> None:
        self.dropped = why
        DROPPED[reason] += 1
        now = ptcp.monotonicTime()
        if now - _last_log[0] >= LOG_EVERY_S:
            log.warning("raft port: dropped a connection: %s (%d more dropped since the last such line)",
                        why, _last_log[1])
            _last_log[:] = [now, 0]
        else:
            _last_log[1] += 1
        self.disconnect()

    def _unwait(self) -> None:
        waiting = _waiting.get(self._TcpConnection__poller)
        if waiting is not None:
            waiting.pop(id(self), None)

    def disconnect(self) -> None:
        self._unwait()
        self.proven = False   # an outgoing connection is reused: it proves the secret again after connect()
        super().disconnect()


_original_bind = pserver.TcpServer.bind
_original_accept = pserver.TcpServer._TcpServer__onNewConnection


def _accept_waiting(server: pserver.TcpServer, descr: int, event: int) -> None:
    """pysyncobj's readable-event handler of the listening socket accepts one connection; call it again while
    more wait, up to ACCEPTS_PER_EVENT."""
    _original_accept(server, descr, event)
    sock = server._TcpServer__socket
    if sock is None:
        return
    ready = select.poll()
    ready.register(sock, select.POLLIN)
    for _ in range(ACCEPTS_PER_EVENT - 1):
        if server._TcpServer__fileno is None or server._TcpServer__socket is not sock:   # unbound (a socket error)
            return
        if not ready.poll(0):
            return
        _original_accept(server, descr, event)


def _bind_with_backlog(server: pserver.TcpServer) -> None:
    """pysyncobj's bind, then a longer accept queue (listen again on a listening socket changes its backlog)."""
    _original_bind(server)
    server._TcpServer__socket.listen(ACCEPT_BACKLOG)


def install() -> None:
    """Make pysyncobj build BoundedConnection for incoming and outgoing Raft connections, and listen with
    ACCEPT_BACKLOG."""
    pserver.TcpConnection = BoundedConnection
    ptransport.TcpConnection = BoundedConnection
    pserver.TcpServer.bind = _bind_with_backlog
    pserver.TcpServer._TcpServer__onNewConnection = _accept_waiting
