"""The per-container shim: the parent of a container's init, so its exit code is never lost.

Run as ``python -I -S shim.py CONFIG.json READY_FD`` (stdlib only, starts fast), or
``shim.py --warm CMD_FD READY_FD``: started ahead of time, it waits for a config path on
CMD_FD so Python's start-up is off the container start path (EOF = exit quietly). It
detaches (double fork + setsid) so it outlives the agent, becomes a child subreaper,
points stdout/stderr at the container's log files (opened O_APPEND, so the agent can
rotate them by copy-truncate and a slow disk never blocks on a pipe), then either
runs the container with ``runc run --detach`` (mode "runc": the container's init is
reparented to the shim when runc exits; the shim then writes the container's CPU quota,
which config.json leaves out so that runc's own init is not charged to it, and kills the
container if it cannot) or starts the command itself (mode "process").
It writes ``ok <pid>`` or ``err <message>`` to READY_FD, reaps orphans
until the container's init exits, and writes ``exit.json`` ({code, signal, oom_kills, at}).
"""
import ctypes
import json
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _oom_kills(memory_cgroup):
    if not memory_cgroup:
        return 0
    for name in ("memory.oom_control", "memory.events"):
        try:
            with open(os.path.join(memory_cgroup, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except OSError:
            continue
    return 0


def _spawn(argv, env=None, cwd=None, own_group=False):
    pid = os.fork()
    if pid == 0:
        try:
            if own_group:
                os.setpgid(0, 0)
            if cwd:
                os.chdir(cwd)
            if env is None:
                os.execvp(argv[0], argv)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            os.write(2, f"raftctl shim: cannot exec {argv[0]}: {exc}\n".encode())
        os._exit(127)
    return pid


def _limit_cpu(limit):
    """Write the container's CPU quota ({file, value}: cpu.cfs_quota_us or cpu.max), which config.json leaves out
    so that runc's own init is not charged to it; why it could not be written, or None."""
    if not limit:
        return None
    try:
        with open(limit["file"], "w") as f:
            f.write(limit["value"])
    except OSError as exc:
        return f"cannot set the CPU quota ({limit['file']}: {exc})"
    return None


def _wait_for(pid):
    """Reap children (and adopted orphans) until ``pid`` exits; return its wait status."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if got == pid:
            return status


def main():
    warm = sys.argv[1] == "--warm"
    if warm:
        cmd_fd, ready_fd = int(sys.argv[2]), int(sys.argv[3])
        os.set_inheritable(cmd_fd, False)
    else:
        cfg_path, ready_fd = sys.argv[1], int(sys.argv[2])
    os.set_inheritable(ready_fd, False)          # neither runc nor the container may hold it open
    if os.fork() != 0:
        os._exit(0)                                     # the agent reaps this one at once
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)            # before the command arrives: off the start path
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if warm:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = os.read(cmd_fd, 4096)
            if not chunk:
                return 0                                # the agent went away before using us
            buf += chunk
        os.close(cmd_fd)
        cfg_path = buf.decode().strip()
    with open(cfg_path) as f:
        cfg = json.load(f)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, cfg["stdout"]), (2, cfg["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(out, fd)
        os.close(out)
    os.close(null)
    with open(os.path.join(cfg["state_dir"], "shim.pid"), "w") as f:
        f.write(str(os.getpid()))

    def ready(msg):
        try:
            os.write(ready_fd, (msg + "\n").encode())
            os.close(ready_fd)
        except OSError:
            pass

    if cfg["mode"] == "runc":
        creator = _spawn(cfg["argv"])
        _, status = os.waitpid(creator, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            ready(f"err runc exited {os.waitstatus_to_exitcode(status)}")
            return 1
        with open(cfg["pid_file"]) as f:
            pid = int(f.read().strip())
        why = _limit_cpu(cfg.get("cpu_limit"))
        if why:
            os.kill(pid, signal.SIGKILL)                # nothing runs without its quota
            ready(f"err {why}; the container was killed")
            return 1
    else:
        pid = _spawn(cfg["argv"], cfg.get("env"), cfg.get("cwd"), own_group=True)
        with open(cfg["pid_file"], "w") as f:
            f.write(str(pid))
    ready(f"ok {pid}")
    status = _wait_for(pid)
    result = {"pid": pid, "at": time.time(), "code": None, "signal": None}
    if status is not None:
        code = os.waitstatus_to_exitcode(status)
        result["code"] = code if code >= 0 else 128 - code
        result["signal"] = -code if code < 0 else None
    result["oom_kills"] = _oom_kills(cfg.get("memory_cgroup"))
    _write_atomic(os.path.join(cfg["state_dir"], "exit.json"), result)
    # keep reaping stragglers of a process-mode group until none are left
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
