"""SimDisk: the Disk protocol (raftctl/node/raft/disk.py) in memory, with a power cut.

A file is an inode holding its bytes as written (visible to reads at once) and an undo log of the
writes and truncations since its last ``fsync``; ``fsync`` just forgets the undo log (the bytes are
durable), so a sync costs nothing however large the file. A directory has two name tables: the names
as they are now and the names as the last ``fsync_dir`` of that directory made durable (creations,
renames and removals count only then). :meth:`crash` keeps exactly the durable state: durable names,
each inode rolled back to its last fsync. Nothing touches the real file system.

``torn=True`` models a disk that got some of the unsynced writes out, in order, before the power
cut: a random number of a file's unsynced operations survive, the last of them possibly cut short
(never a byte that was not written). A journal must cut such a tail back to its last valid record.
"""
from __future__ import annotations

import posixpath
import random


class SimCrash(BaseException):
    """The power goes out in the middle of a disk operation (raised by an armed SimDisk).

    A BaseException so that no ``except Exception`` on the way up mistakes it for an I/O error."""


class _Inode:
    __slots__ = ("data", "undo")

    def __init__(self) -> None:
        self.data = bytearray()
        # (offset, bytes it replaced, length before, bytes written): undone newest first
        self.undo: list[tuple[int, bytes, int, int]] = []

    def rollback(self, keep: int = 0, rng: random.Random | None = None) -> int:
        """Undo every unsynced operation after the first ``keep``; return the bytes lost."""
        lost = 0
        while len(self.undo) > keep:
            offset, old, old_len, written = self.undo.pop()
            self.data[offset:offset + len(old)] = old
            del self.data[old_len:]
            lost += written
        if keep and rng is not None:
            # the last surviving operation may be torn: keep only a prefix of what it appended
            offset, old, old_len, written = self.undo[-1]
            if not old and offset >= old_len and written > 1:
                cut = rng.randint(1, written)
                del self.data[offset + cut:]
                lost += written - cut
        self.undo = []
        return lost


class SimDisk:
    def __init__(self) -> None:
        self._names: dict[str, _Inode] = {}      # path -> inode, as visible now
        self._durable: dict[str, _Inode] = {}    # path -> inode, as the last fsync_dir of its dir left it
        self.syncs = 0                           # fsync + fsync_dir calls (a cost figure)
        self.crashes = 0
        self.armed: int | None = None            # crash at the armed-th mutating call from now
        # The power is out (SimCrash raised) until crash() is called: every further call raises too,
        # even if the code on the way up caught the first SimCrash (pysyncobj has bare excepts).
        self.dead = False

    def arm(self, ops: int) -> None:
        """Raise SimCrash instead of performing the ``ops``-th mutating call from now (1 = the next)."""
        if ops < 1:
            raise ValueError("ops must be >= 1")
        self.armed = ops

    def _op(self) -> None:
        if self.dead:
            raise SimCrash("the power is out")
        if self.armed is not None:
            self.armed -= 1
            if self.armed <= 0:
                self.armed = None
                self.dead = True
                raise SimCrash("power cut during a disk operation")

    # -- the Disk protocol -----------------------------------------------------
    def read(self, path: str) -> bytes | None:
        if self.dead:
            raise SimCrash("the power is out")
        ino = self._names.get(path)
        return None if ino is None else bytes(ino.data)

    def _inode(self, path: str) -> "_Inode":
        """The file at ``path``, created empty (not yet durable) if absent."""
        ino = self._names.get(path)
        if ino is None:
            ino = self._names[path] = _Inode()
        return ino

    def write(self, path: str, offset: int, data: bytes) -> None:
        self._op()
        if offset < 0:
            raise ValueError("negative offset")
        ino = self._inode(path)
        old_len = len(ino.data)
        ino.undo.append((offset, bytes(ino.data[offset:offset + len(data)]), old_len, len(data)))
        if old_len < offset:
            ino.data.extend(b"\0" * (offset - old_len))
        ino.data[offset:offset + len(data)] = data

    def truncate(self, path: str, size: int) -> None:
        self._op()
        if size < 0:
            raise ValueError("negative size")
        ino = self._inode(path)
        old_len = len(ino.data)
        ino.undo.append((size, bytes(ino.data[size:]), old_len, 0))
        if old_len > size:
            del ino.data[size:]
        else:
            ino.data.extend(b"\0" * (size - old_len))

    def size(self, path: str) -> int:
        ino = self._names.get(path)
        return -1 if ino is None else len(ino.data)

    def fsync(self, path: str) -> None:
        self._op()
        ino = self._names.get(path)
        if ino is None:
            raise FileNotFoundError(path)
        ino.undo = []
        self.syncs += 1

    def rename(self, src: str, dst: str) -> None:
        self._op()
        ino = self._names.pop(src, None)
        if ino is None:
            raise FileNotFoundError(src)
        self._names[dst] = ino

    def fsync_dir(self, dirpath: str) -> None:
        self._op()
        d = posixpath.normpath(dirpath or ".")
        for path in [p for p in self._durable if self._dir(p) == d]:
            del self._durable[path]
        for path, ino in self._names.items():
            if self._dir(path) == d:
                self._durable[path] = ino
        self.syncs += 1

    def remove(self, path: str) -> None:
        self._op()
        self._names.pop(path, None)

    def listdir(self, dirpath: str) -> list[str]:
        d = posixpath.normpath(dirpath or ".")
        return sorted(posixpath.basename(p) for p in self._names if self._dir(p) == d)

    # -- the simulation's side ---------------------------------------------------
    @staticmethod
    def _dir(path: str) -> str:
        return posixpath.normpath(posixpath.dirname(path) or ".")

    def unsynced_ops(self) -> int:
        return sum(len(ino.undo) for ino in {id(i): i for i in self._names.values()}.values())

    def crash(self, rng: random.Random | None = None, torn: bool = False) -> int:
        """Power cut: keep only durable names and what was synced. Returns the written bytes lost."""
        lost = 0
        done: set[int] = set()
        for path in sorted(self._durable):
            ino = self._durable[path]
            if id(ino) in done:
                continue
            done.add(id(ino))
            keep = rng.randint(0, len(ino.undo)) if torn and rng is not None and ino.undo else 0
            lost += ino.rollback(keep, rng if keep else None)
        lost += sum(len(ino.data) for p, ino in self._names.items()
                    if p not in self._durable and id(ino) not in done)
        self._names = dict(self._durable)
        self.armed = None
        self.dead = False
        self.crashes += 1
        return lost
