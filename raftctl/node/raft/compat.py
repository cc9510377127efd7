"""The pysyncobj raftctl was written against, asserted at import.

raftctl overrides and reads pysyncobj internals (name-mangled ``_SyncObj__*`` methods and attributes).
A different pysyncobj could rename or change them silently, so importing raftctl.node.raft checks the
pinned version and that every private name listed here still exists, and fails with a RuntimeError
naming the installed version otherwise.

One list for the whole package: a module that starts relying on another private name adds it below.
"""
from __future__ import annotations

import importlib

import pysyncobj.syncobj as psyncobj
import pysyncobj.tcp_connection as ptcp
from pysyncobj.version import VERSION

PINNED_VERSION = "0.3.17"

# Methods of SyncObj that raftctl overrides or calls, with the leading parameter names raftctl relies on
# (an override must keep the signature pysyncobj calls it with).
SYNCOBJ_METHODS: dict[str, tuple[str, ...]] = {
    # replication.py (H6): overridden
    "_SyncObj__onMessageReceived": ("self", "node", "message"),
    "_SyncObj__sendAppendEntries": ("self",),
    "_SyncObj__onNodeDisconnected": ("self", "node"),  # bound as the transport's callback in SyncObj.__init__
    "_checkCommandsToApply": ("self",),  # group commit: one journal batch and one send per tick (D, s4)
    # replication.py (H6): called
    "_SyncObj__generateRaftTimeout": ("self",),
    "_SyncObj__onLeaderChanged": ("self",),
    "_SyncObj__setCurrentTerm": ("self", "term", "votedForNodeId"),
    "_SyncObj__setState": ("self", "newState"),
    "_SyncObj__getEntries": ("self", "fromIDx", "count", "maxSizeBytes"),
    "_SyncObj__getPrevLogIndexTerm": ("self", "nextNodeIndex"),
    "_SyncObj__deleteEntriesFrom": ("self", "fromIDx"),
    "_SyncObj__parseChangeClusterRequest": ("self", "command"),
    "_SyncObj__doChangeCluster": ("self", "request", "reverse"),
    "_SyncObj__loadDumpFile": ("self", "clearJournal"),
    "_SyncObj__connectedToAnyone": ("self",),
    "_getLeader": ("self",),
    "_isLeader": ("self",),
    "getStatus": ("self",),
    "addOnTickCallback": ("self", "callback"),
    # membership.py: overridden (one change at a time) and called (proposing a learner, a promotion)
    "_SyncObj__changeCluster": ("self", "request"),
    "_SyncObj__doApplyCommand": ("self", "command"),
    "_applyCommand": ("self", "command", "callback", "commandType"),
    # __init__.py (H7): overridden (snapshot load from a non-OS Disk; closing the snapshot writer)
    "_onTick": ("self", "timeToWait"),
    "_doDestroy": ("self",),
    # tests/sim (H8): ticks the nodes itself (autoTick=False)
    "doTick": ("self", "timeToWait"),
}

# Instance attributes SyncObj.__init__ sets that raftctl reads or writes.
SYNCOBJ_ATTRIBUTES: tuple[str, ...] = (
    # replication.py (H6)
    "_SyncObj__raftLog", "_SyncObj__raftCurrentTerm", "_SyncObj__raftState", "_SyncObj__raftLeader",
    "_SyncObj__raftCommitIndex", "_SyncObj__raftLastApplied", "_SyncObj__raftNextIndex",
    "_SyncObj__raftMatchIndex", "_SyncObj__lastResponseTime", "_SyncObj__leaderCommitIndex",
    "_SyncObj__raftElectionDeadline", "_SyncObj__transferInProgress", "_SyncObj__recvTransmission",
    "_SyncObj__transport", "_SyncObj__serializer", "_SyncObj__conf", "_SyncObj__otherNodes",
    "_SyncObj__readonlyNodes", "_SyncObj__connectedNodes", "_SyncObj__newAppendEntriesTime",
    "_SyncObj__selfNode", "_poller",
    # membership.py
    "_SyncObj__nodeClass", "_SyncObj__noopIDx",
    # __init__.py raft_status
    "_SyncObj__votedForNodeId",
    # __init__.py _onTick (H7)
    "_SyncObj__needLoadDumpFile",
)

# Module-level names of pysyncobj.syncobj raftctl uses or replaces.
SYNCOBJ_MODULE_NAMES: tuple[str, ...] = (
    "createJournal", "monotonicTime", "_RAFT_STATE", "_COMMAND_TYPE", "_bchr", "pickle",
    # __init__.py (H7): replaced by a factory returning snapshot.SnapshotFiles (same six methods)
    "Serializer",
    # tests/sim (H8): patched during a simulated run (clock, election-timeout randomness, wake-up pipe)
    "random", "PIPE_NOTIFIER_ENABLED",
)


# Module-level names of pysyncobj.tcp_connection raftctl replaces or uses.
TCP_CONNECTION_MODULE_NAMES: tuple[str, ...] = (
    "zlib",   # wire.py: what TcpConnection.send compresses with and its parser decompresses with
    "pickle",   # wire.py: what TcpConnection.send pickles with (protocol 4) and its parser unpickles with
    "monotonicTime",   # frames.py: the clock TcpConnection times reads with
)

# Methods of TcpConnection that raftctl overrides or calls (frames.py), with their parameters.
TCP_CONNECTION_METHODS: dict[str, tuple[str, ...]] = {
    "_TcpConnection__tryReadBuffer": ("self",),        # frames.py: overridden (a read budget, bounds checked)
    "_TcpConnection__processRead": ("self",),          # frames.py: called (one recv into the read buffer)
    "_TcpConnection__processParseMessage": ("self",),  # frames.py: overridden (bounds; proof of the secret)
    "disconnect": ("self",),                           # frames.py: overridden
    "send": ("self", "message"),                       # frames.py: overridden (asks for writability)
    "_TcpConnection__processConnection": ("self", "descr", "eventType"),  # frames.py: subscribed again
    "setSockoptKeepalive": ("self",),                  # frames.py: overridden (adds TCP_USER_TIMEOUT)
}

# Instance attributes TcpConnection.__init__ sets that raftctl reads or writes.
TCP_CONNECTION_ATTRIBUTES: tuple[str, ...] = (
    "_TcpConnection__readBuffer", "_TcpConnection__lastReadTime", "_TcpConnection__poller",  # frames.py
    "_TcpConnection__writeBuffer", "_TcpConnection__fileno",  # frames.py
    "_TcpConnection__socket",  # frames.py: the user timeout
    "recvRandKey", "encryptor",  # frames.py: what proves the secret
)

# Modules that build connections by the name TcpConnection, replaced by frames.BoundedConnection.
CONNECTION_BUILDERS: tuple[str, ...] = ("pysyncobj.tcp_server", "pysyncobj.transport")

# What frames.py wraps of TcpServer: its bind (then listens again with a longer backlog), its accept (repeated while
# connections wait) and the socket it binds.
TCP_SERVER_METHODS: tuple[str, ...] = ("bind", "_TcpServer__onNewConnection")   # frames.py wraps both
TCP_SERVER_ATTRIBUTES: tuple[str, ...] = ("_TcpServer__socket", "_TcpServer__fileno")


def check(syncobj_module=psyncobj, version: str = VERSION, tcp_module=ptcp) -> None:
    """Raise RuntimeError naming ``version`` unless it is the pinned one and every name above exists."""
    problems: list[str] = []
    if version != PINNED_VERSION:
        problems.append(f"version {version} is not the pinned {PINNED_VERSION}")
    cls = getattr(syncobj_module, "SyncObj", None)
    if cls is None:
        problems.append("no SyncObj class")
    else:
        for name, params in SYNCOBJ_METHODS.items():
            fn = getattr(cls, name, None)
            code = getattr(fn, "__code__", None)
            if code is None:
                problems.append(f"missing method SyncObj.{name}")
                continue
            have = code.co_varnames[:code.co_argcount]
            if have[:len(params)] != params:
                problems.append(f"SyncObj.{name} takes {have}, expected {params}")
        init_names = set(cls.__init__.__code__.co_names)
        for attr in SYNCOBJ_ATTRIBUTES:
            if attr not in init_names:
                problems.append(f"SyncObj.__init__ no longer sets {attr}")
    for name in SYNCOBJ_MODULE_NAMES:
        if not hasattr(syncobj_module, name):
            problems.append(f"pysyncobj.syncobj.{name} is gone")
    for name in TCP_CONNECTION_MODULE_NAMES:
        if not hasattr(tcp_module, name):
            problems.append(f"pysyncobj.tcp_connection.{name} is gone")
    conn = getattr(tcp_module, "TcpConnection", None)
    if conn is None:
        problems.append("no TcpConnection class")
    else:
        for name, params in TCP_CONNECTION_METHODS.items():
            code = getattr(getattr(conn, name, None), "__code__", None)
            if code is None:
                problems.append(f"missing method TcpConnection.{name}")
            elif code.co_varnames[:code.co_argcount][:len(params)] != params:
                problems.append(f"TcpConnection.{name} takes {code.co_varnames[:code.co_argcount]}, "
                                f"expected {params}")
        init_names = set(conn.__init__.__code__.co_names)
        for attr in TCP_CONNECTION_ATTRIBUTES:
            if attr not in init_names:
                problems.append(f"TcpConnection.__init__ no longer sets {attr}")
    server = getattr(importlib.import_module("pysyncobj.tcp_server"), "TcpServer", None)
    if server is None:
        problems.append("no TcpServer class")
    else:
        problems += [f"missing method TcpServer.{m}" for m in TCP_SERVER_METHODS if not hasattr(server, m)]
        problems += [f"TcpServer.__init__ no longer sets {a}" for a in TCP_SERVER_ATTRIBUTES
                     if a not in server.__init__.__code__.co_names]
    for module in CONNECTION_BUILDERS:
        if not hasattr(importlib.import_module(module), "TcpConnection"):
            problems.append(f"{module} no longer builds connections by the name TcpConnection")
    if problems:
        raise RuntimeError(f"raftctl needs pysyncobj {PINNED_VERSION} (installed: {version}): "
                           + "; ".join(problems))


check()
