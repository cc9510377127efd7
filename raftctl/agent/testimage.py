"""A tiny busybox image for tests and benchmarks: /bin/busybox plus applet symlinks."""
from __future__ import annotations

import os
import shutil

BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "ps", "sleep", "cat", "echo", "kill", "ls", "httpd", "nc", "dd", "touch", "mkdir",
           "seq", "true", "false", "id", "hostname", "wc", "grep", "head", "rm", "env", "yes", "test")


def busybox_available() -> bool:
    return os.path.isfile(BUSYBOX) and os.access(BUSYBOX, os.X_OK)


def make_busybox_dir(dest: str, extra_files: dict[str, str] | None = None) -> str:
    """Fill ``dest`` with a static busybox and its applets; ``extra_files`` maps path -> text."""
    if not busybox_available():
        raise FileNotFoundError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    shutil.copyfile(BUSYBOX, os.path.join(dest, "bin", "busybox"))
    os.chmod(os.path.join(dest, "bin", "busybox"), 0o755)
    for applet in APPLETS:
        link = os.path.join(dest, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    for d in ("proc", "dev", "sys", "tmp", "data", "etc", "www"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
        os.chmod(os.path.join(dest, d), 0o755)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    files = {"etc/passwd": "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
             "etc/group": "root:x:0:\nnogroup:x:65534:\n", "www/index.html": "hello from busybox\n"}
    files.update(extra_files or {})
    for rel, text in files.items():
        p = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o644)
    return dest
