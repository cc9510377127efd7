"""Per-container log files with size rotation.

The container (through its shim) writes straight into ``stdout.log`` / ``stderr.log``
opened with O_APPEND: no forwarder process sits in the path, so a stalled agent never
blocks a container on a full pipe, and logs survive an agent restart. The cost is that
rotation is copy-then-truncate done by the agent: lines written between the copy and
the truncate are lost, and a file can overshoot its limit until the next rotation pass.
"""
from __future__ import annotations

import os
import shutil

STREAMS = ("stdout", "stderr")


def paths(log_dir: str) -> dict[str, str]:
    return {s: os.path.join(log_dir, f"{s}.log") for s in STREAMS}


def prepare(log_dir: str) -> dict[str, str]:
    os.makedirs(log_dir, exist_ok=True)
    out = paths(log_dir)
    for p in out.values():
        open(p, "a").close()
    return out


def rotate(log_dir: str, max_bytes: int, keep: int) -> list[str]:
    """Rotate every stream over ``max_bytes`` (copy to .1, shift older, truncate); return rotated paths."""
    rotated = []
    for path in paths(log_dir).values():
        try:
            if os.path.getsize(path) <= max_bytes:
                continue
        except FileNotFoundError:
            continue
        for i in range(keep - 1, 0, -1):
            older = f"{path}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{path}.{i + 1}")
        if keep > 0:
            shutil.copyfile(path, f"{path}.1")
        with open(path, "r+b") as f:
            f.truncate(0)
        rotated.append(path)
    return rotated


def tail(log_dir: str, stream: str = "stdout", max_bytes: int = 64 * 1024) -> str:
    path = paths(log_dir)[stream]
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
