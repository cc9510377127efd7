"""Raft messages on the wire: zlib's stored form instead of compressing every message, and pickle protocol 4
instead of pysyncobj's protocol 2.

pysyncobj sends every message as ``zlib.compress(pickle.dumps(message), 3)``, Fernet-encrypted, and reads it back
with ``zlib.decompress``. Compressing the ~800-byte pickle of an AppendEntries that carries one group-committed entry
of 7 writes took 24-70 us on this 2-core machine (three runs), against 1.7 us to pickle it and 4.4 us to encrypt it:
deflate sets up its window and hash tables afresh for every call. The leader sends every entry to each follower, and
each follower's proposals and answers go the same way (docs/raft.md, "Raft messages without compression").

raftctl's replicas send the same zlib format (RFC 1950) with its data in stored blocks (RFC 1951, BTYPE 00: the
bytes as they are, at most 65,535 per block) and the Adler-32 of the data: ``zlib.decompress`` reads it unchanged,
so a replica of an older raftctl (or plain pysyncobj) reads what this one sends, and this one reads their
compressed messages as before; nothing is negotiated. A message costs ~1.6 us to frame and is 6 bytes, plus 5 per
65,535, larger than the pickle it carries (Raft peers share a datacenter; a snapshot's chunks cross it in
the time deflate would take to shrink them).

pysyncobj also pickles every message, and wraps every log entry's command (``(method id, args, kwargs)``), with
protocol 2 (``pysyncobj/pickle.py``, kept for Python 2 peers). Protocol 2 has no opcode for ``bytes``: each one is
pickled as a call to ``codecs.encode`` of its latin-1 text, so a byte above 0x7F takes two bytes (UTF-8), and
unpickling looks that function up and calls it for every entry. raftctl's entries are CBOR, mostly such bytes.
Replicas now pickle with protocol 4 (``PICKLE_PROTOCOL``: BINBYTES, the bytes as they are); ``pickle.loads`` reads
every protocol, so a replica of an older raftctl reads what this one sends and the other way round, and a journal
or snapshot written before holds protocol 2 entries that still apply. Measured here (session 33, one process): an
AppendEntries carrying three 300-byte entries pickles to 470 bytes instead of 1,007, in 0.57 us instead of 2.51, and
unpickles in 1.00 us instead of 2.66; the command wrapper of one entry 0.36 / 0.39 us instead of 1.81 / 1.57.
"""
from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any

import pysyncobj.syncobj as psyncobj
import pysyncobj.tcp_connection as ptcp

ZLIB_HEADER = b"\x78\x01"   # deflate, 32 KiB window, "fastest" level hint; (0x78 * 256 + 0x01) % 31 == 0
STORED_BLOCK = 65535        # the most bytes one stored block holds (its LEN is 16 bits)
_BLOCK_HEAD = struct.Struct("<BHH")   # BFINAL + BTYPE 00 in one byte (aligned: nothing precedes it), LEN, NLEN
_ADLER = struct.Struct(">I")


def stored(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored blocks: ``zlib.decompress(stored(data)) == data``."""
    n = len(data)
    if n <= STORED_BLOCK:   # every Raft message but a snapshot chunk or a large entry: one block
        return b"".join((ZLIB_HEADER, _BLOCK_HEAD.pack(1, n, n ^ 0xFFFF), data, _ADLER.pack(zlib.adler32(data))))
    view = memoryview(data)
    parts: list[Any] = [ZLIB_HEADER]
    for start in range(0, n, STORED_BLOCK):
        size = min(STORED_BLOCK, n - start)
        parts.append(_BLOCK_HEAD.pack(1 if start + size == n else 0, size, size ^ 0xFFFF))
        parts.append(view[start:start + size])
    parts.append(_ADLER.pack(zlib.adler32(data)))
    return b"".join(parts)


class StoredZlib:
    """What pysyncobj.tcp_connection calls ``zlib``: ``compress`` frames in stored blocks whatever the level asked,
    ``decompress`` is zlib's (it reads stored and compressed streams alike)."""

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return stored(data)

    decompress = staticmethod(zlib.decompress)


PICKLE_PROTOCOL = 4   # BINBYTES (protocol 3 on) and framing; read by every Python 3.4 and later


class Pickle:
    """What pysyncobj's syncobj and tcp_connection modules call ``pickle`` (they use ``dumps`` and ``loads``
    alone): protocol 4 whatever they ask, and ``pickle.loads``, which reads any protocol. (pysyncobj's own
    ``loads`` retried a failed load with the pure-Python unpickler, for Python 2 peers.)"""

    @staticmethod
    def dumps(obj: Any, protocol: int | None = None) -> bytes:
        return pickle.dumps(obj, PICKLE_PROTOCOL)

    loads = staticmethod(pickle.loads)


def install() -> None:
    """Make pysyncobj's TcpConnection send stored-block zlib (its only use of the name ``zlib``), and pysyncobj
    pickle its messages and its entries' commands with protocol 4."""
    ptcp.zlib = StoredZlib()
    ptcp.pickle = Pickle
    psyncobj.pickle = Pickle
