"""The file layer under the Raft journal, meta and snapshot files.

Everything the Raft glue writes goes through a :class:`Disk`, so that the simulation (tests/sim)
can substitute a disk that keeps written-but-unsynced bytes apart and drops them on a simulated
crash. The contract is the one a POSIX file system gives:

* ``write`` makes bytes visible to ``read`` at once, but durable only after ``fsync(path)``;
* ``rename`` is atomic, but the new name is durable only after ``fsync_dir`` of its directory;
* a file created by ``write`` is durable (by name) only after ``fsync_dir`` of its directory.

:class:`OsDisk` is the real one: ``os.pwrite``/``os.fdatasync``/``os.ftruncate`` on file descriptors
kept open per path (opening a file per append costs more than the write).
"""
from __future__ import annotations

import os
import threading
from typing import Protocol


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe or a file opened by a forked child: no ``Disk`` there)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Disk(Protocol):
    def read(self, path: str) -> bytes | None:
        """The whole file as last written (None if absent)."""

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, creating the file if absent."""

    def truncate(self, path: str, size: int) -> None:
        """Cut (or zero-extend) the file to ``size`` bytes."""

    def size(self, path: str) -> int:
        """The file's size in bytes, -1 if absent."""

    def fsync(self, path: str) -> None:
        """Make the file's contents durable."""

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src``; durable only after :meth:`fsync_dir`."""

    def fsync_dir(self, dirpath: str) -> None:
        """Make the directory's entries (creations, renames, removals) durable."""

    def remove(self, path: str) -> None:
        """Remove the file (no error if absent)."""

    def listdir(self, dirpath: str) -> list[str]:
        """The names in the directory ([] if absent)."""


# fdatasync flushes the data and the metadata needed to read it back (the size of an appended file),
# not the timestamps: 0.22 ms per 200-byte append here against 0.74 ms for fsync (ext4).
_datasync = getattr(os, "fdatasync", os.fsync)


class OsDisk:
    """The real file system, with one open read-write fd per path."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: str, create: bool) -> int | None:
        fd = self._fds.get(path)
        if fd is None:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
            except FileNotFoundError:
                if create:
                    raise
                return None
            self._fds[path] = fd
        return fd

    def _forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def read(self, path: str) -> bytes | None:
        with self._lock:
            fd = self._fd(path, create=False)
            if fd is None:
                return None
            size = os.fstat(fd).st_size
            chunks = []
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)

    def write(self, path: str, offset: int, data: bytes) -> None:
        with self._lock:
            fd = self._fd(path, create=True)
            assert fd is not None
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n

    def truncate(self, path: str, size: int) -> None:
        with self._lock:
            fd = self._fd(path, create=True)
            assert fd is not None
            os.ftruncate(fd, size)

    def size(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            try:
                return os.fstat(fd).st_size if fd is not None else os.stat(path).st_size
            except FileNotFoundError:
                return -1

    def fsync(self, path: str) -> None:
        with self._lock:
            fd = self._fd(path, create=False)
            if fd is None:
                raise FileNotFoundError(path)
            _datasync(fd)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            # An fd stays bound to its inode: the one open for src now is dst's file.
            self._forget(dst)
            os.replace(src, dst)
            fd = self._fds.pop(src, None)
            if fd is not None:
                self._fds[dst] = fd

    def fsync_dir(self, dirpath: str) -> None:
        fd = os.open(dirpath or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        with self._lock:
            self._forget(path)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def listdir(self, dirpath: str) -> list[str]:
        try:
            return sorted(os.listdir(dirpath))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Close every fd kept open (the files stay as they are)."""
        with self._lock:
            for path in list(self._fds):
                self._forget(path)
