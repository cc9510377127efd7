"""Raft messages on the wire: zlib's stored form instead of compressing every message.

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
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

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


def install() -> None:
    """Make pysyncobj's TcpConnection send stored-block zlib (its only use of the name ``zlib``)."""
    ptcp.zlib = StoredZlib()
