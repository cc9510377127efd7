"""A hostile tenant (issue 12, item 9): what a deployer's job can reach from inside its container.

The first tests read the OCI config the agent writes (no root needed). The rest run the attack for real, through
the runc driver the agent uses, with the container built from a normalized job spec as the agent builds it
(ContainerSpec.from_placement); they skip loudly without root and runc. The attack is a small python3 script
(raw syscalls through ctypes) in a `base: host` image; each attempt prints one JSON line and the test asserts
each one was refused or contained.
"""
from __future__ import annotations

import errno
import json
import os
import textwrap
import time
import uuid
from typing import Any

import pytest

from raftctl.agent.runtime import bundle, seccomp
from raftctl.agent.runtime.base import ContainerSpec, RuntimeError_
from tests.agent.conftest import job_spec, wait_for

JOB: dict[str, Any] = {"name": "evil", "image": "evil:1", "base": "host", "command": ["true"], "env": {},
                       "user": None, "resources": {"cpu": 500, "memory": 96 << 20, "pids": 32}, "network": "host",
                       "ports": [], "capabilities": []}


def spec_of(job: dict[str, Any], rootfs: str = "/img", log_dir: str = "/logs") -> ContainerSpec:
    placement = {"id": f"evil-{uuid.uuid4().hex[:8]}", "job": job["name"], "version": 1, "replica": 0, "ports": {}}
    return ContainerSpec.from_placement(placement, job_spec(**job), rootfs=rootfs, log_dir=log_dir, image="sha256:" + "e" * 64)


def config_of(job: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return bundle.config(spec_of(job), cgroups_path="/x", data_dir="/d", host_binds=["/usr"], memsw=False, **kw)


# -- the config the agent writes (no root needed) ------------------------------------------------------
def test_defaults_are_non_root_no_capabilities_no_new_privileges_and_seccomp():
    cfg = config_of(JOB)
    p = cfg["process"]
    assert p["user"] == {"uid": 65534, "gid": 65534}
    assert p["capabilities"] == {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")}
    assert p["noNewPrivileges"] is True
    sc = cfg["linux"]["seccomp"]
    assert sc["defaultAction"] == "SCMP_ACT_ALLOW"
    assert set(sc["architectures"]) == {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}
    denied = {n for r in sc["syscalls"] if "args" not in r and r["errnoRet"] == errno.EPERM for n in r["names"]}
    for name in ("mount", "umount2", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key",
                 "request_key", "bpf", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load",
                 "init_module", "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at",
                 "clock_settime", "clock_adjtime", "settimeofday", "adjtimex", "stime", "reboot", "swapon", "swapoff",
                 "pivot_root", "chroot", "acct", "quotactl", "lookup_dcookie", "iopl", "ioperm", "vhangup",
                 "mount_setattr", "fsopen", "fsmount", "move_mount", "open_tree"):
        assert name in denied, name
    assert "unshare" not in denied and "clone" not in denied   # refused only with CLONE_NEWUSER (below)
    by_name = {r["names"][0]: r for r in sc["syscalls"] if "args" in r and r["names"][0] in ("unshare", "clone")}
    for name in ("unshare", "clone"):
        assert by_name[name]["args"] == [{"index": 0, "value": seccomp.CLONE_NEWUSER,
                                          "valueTwo": seccomp.CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}]
    assert any(r["names"] == ["personality"] for r in sc["syscalls"])


def test_uid_0_and_capabilities_only_when_the_job_asks():
    root = config_of({**JOB, "user": "0"})["process"]
    assert root["user"] == {"uid": 0, "gid": 0} and root["capabilities"]["effective"] == []
    assert config_of({**JOB, "user": "0:0"})["process"]["user"] == {"uid": 0, "gid": 0}
    asked = config_of({**JOB, "user": "0", "capabilities": ["CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"]})
    caps = asked["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == ["CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"]
    assert caps["ambient"] == []                         # root keeps them without the ambient set
    assert "chroot" not in seccomp.denied_names(["CAP_SYS_CHROOT"])    # asked for chroot: the filter allows it
    user = config_of({**JOB, "user": "1000", "capabilities": ["CAP_NET_BIND_SERVICE"]})["process"]
    assert user["user"] == {"uid": 1000, "gid": 1000}
    assert user["capabilities"]["ambient"] == user["capabilities"]["inheritable"] == ["CAP_NET_BIND_SERVICE"]
    with pytest.raises(RuntimeError_, match="CAP_SYS_ADMIN"):
        config_of({**JOB, "capabilities": ["CAP_SYS_ADMIN"]})


def test_host_base_mounts_are_recursively_read_only_and_never_etc_wholesale():
    cfg = config_of(JOB, files={"/etc/hosts": "/etc/hosts", "/etc/passwd": "/b/etc-passwd"})
    binds = [m for m in cfg["mounts"] if m["type"] == "bind" and m["destination"] != "/data"]
    assert binds and all({"ro", "rro", "nosuid", "nodev"} <= set(m["options"]) for m in binds)
    assert not any(m["destination"] == "/etc" or m["source"] in ("/etc", "/etc/shadow") for m in cfg["mounts"])
    assert "/etc" not in bundle.HOST_BASE_DIRS and not any(n.startswith("shadow") for n in bundle.HOST_ETC)
    passwd, group = bundle.passwd_group(1000, 1001)
    assert "app:x:1000:1001:" in passwd and "nobody:x:65534" in passwd and "app:x:1001:" in group


# -- the attack, for real ------------------------------------------------------------------------------
ATTACK = r'''
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def out(name, ok, detail=""):
    print(json.dumps({"attack": name, "succeeded": bool(ok), "detail": detail if isinstance(detail, dict) else str(detail)}), flush=True)
def sys_(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    out(name, r >= 0, errno.errorcode.get(ctypes.get_errno(), r) if r < 0 else r)
def read(name, path):
    try:
        with open(path, "rb") as f:
            out(name, True, f.read(40))
    except OSError as e:
        out(name, False, errno.errorcode.get(e.errno))
def listdir(name, path):
    try:
        out(name, True, os.listdir(path)[:5])
    except OSError as e:
        out(name, False, errno.errorcode.get(e.errno))
def write(name, path):
    try:
        with open(path, "w") as f:
            f.write("owned")
        out(name, True, path)
    except OSError as e:
        out(name, False, errno.errorcode.get(e.errno))
read("read /etc/shadow", "/etc/shadow")
read("read the agent token", os.environ["TOKEN"])
listdir("list the agent data dir", os.environ["AGENT_DATA"])
for p in ("/usr/x", "/usr/bin/x", "/usr/lib/x", "/etc/hosts", "/etc/resolv.conf", "/etc/passwd", "/app/x",
          "/proc/sys/kernel/hostname", "/sys/kernel/x", "/proc/sysrq-trigger"):
    write("write " + p, p)
os.makedirs("/tmp/m", exist_ok=True)
ctypes.set_errno(0)
r = libc.mount(b"tmpfs", b"/tmp/m", b"tmpfs", 0, None)
out("mount tmpfs", r == 0, errno.errorcode.get(ctypes.get_errno()))
ctypes.set_errno(0)
r = libc.mount(b"/usr", b"/usr", None, 0x1000 | 0x20, None)    # MS_BIND|MS_REMOUNT, rw
out("remount /usr rw", r == 0, errno.errorcode.get(ctypes.get_errno()))
CLONE_NEWUSER = 0x10000000
sys_("unshare -U", 272, CLONE_NEWUSER)
sys_("unshare -U via x32", 0x40000000 | 272, CLONE_NEWUSER)
sys_("clone CLONE_NEWUSER", 56, CLONE_NEWUSER | 17, 0, 0, 0, 0)
sys_("setns", 308, 0, 0)
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
sys_("ptrace attach", 101, 16, child, 0, 0)            # PTRACE_ATTACH
sys_("ptrace attach pid 1", 101, 16, 1, 0, 0)
buf = ctypes.create_string_buffer(8)
sys_("process_vm_readv", 310, child, 0, 0, 0, 0, 0)
os.kill(child, 9); os.waitpid(child, 0)
sys_("keyctl", 250, 0, -3, 1)   # KEYCTL_GET_KEYRING_ID(session, create)
sys_("add_key", 248, ctypes.addressof(ctypes.create_string_buffer(b"user")),
     ctypes.addressof(ctypes.create_string_buffer(b"k")), ctypes.addressof(buf), 1, -3)
attr = ctypes.create_string_buffer(128)
sys_("bpf", 321, 0, ctypes.addressof(attr), 128)
sys_("perf_event_open", 298, ctypes.addressof(attr), 0, -1, -1, 0)
sys_("userfaultfd", 323, 0)
fd = os.open("/dev/null", os.O_RDONLY)
sys_("finit_module", 313, fd, ctypes.addressof(ctypes.create_string_buffer(b"")), 0)
sys_("init_module", 175, ctypes.addressof(buf), 8, ctypes.addressof(ctypes.create_string_buffer(b"")))
sys_("delete_module", 176, ctypes.addressof(ctypes.create_string_buffer(b"ext4")), 0)
sys_("kexec_load", 246, 0, 0, 0, 0)
ts = (ctypes.c_long * 2)(0, 0)
sys_("clock_settime", 227, 0, ctypes.addressof(ts))
sys_("settimeofday", 164, ctypes.addressof(ts), 0)
sys_("adjtimex", 159, ctypes.addressof(ctypes.create_string_buffer(256)))
sys_("reboot", 169, 0xfee1dead, 0x28121969, 0x4321fedc, 0)   # LINUX_REBOOT_CMD_POWER_OFF
sys_("swapoff", 168, ctypes.addressof(ctypes.create_string_buffer(b"/dev/null")))
sys_("personality ADDR_NO_RANDOMIZE", 135, 0x0040000)
sys_("io_uring_setup", 425, 1, ctypes.addressof(ctypes.create_string_buffer(120)))
sys_("open_by_handle_at", 304, -100, ctypes.addressof(ctypes.create_string_buffer(64)), 0)
forks = []
while True:
    try:
        pid = os.fork()
    except OSError as e:
        out("fork bomb", False, {"forked": len(forks), "errno": errno.errorcode.get(e.errno)})
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forks.append(pid)
    if len(forks) > 500:
        out("fork bomb", True, {"forked": len(forks)})
        break
for pid in forks:
    os.kill(pid, 9)
for pid in forks:
    os.waitpid(pid, 0)
print(json.dumps({"attack": "done", "uid": os.getuid()}), flush=True)
'''
PIDS = 32


@pytest.fixture(scope="module")
def attack_image(runc_driver, tmp_path_factory):
    src = tmp_path_factory.mktemp("attack")
    (src / "app").mkdir()
    (src / "app" / "attack.py").write_text(textwrap.dedent(ATTACK))
    return runc_driver.images.build(str(src), "attack:1", base="host")


def run_job(runc_driver, image, job, tmp_path, env=None, timeout=60.0):
    """Run ``job`` (a normalized spec) to its exit through the runc driver: (exit code, stdout, stderr)."""
    spec = spec_of({**job, "env": env or {}}, rootfs=runc_driver.prepare_image(image),
                   log_dir=str(tmp_path / "logs" / uuid.uuid4().hex[:8]))
    runc_driver.create(spec)
    try:
        runc_driver.start(spec.id)
        obs = wait_for(lambda: (o := runc_driver.status(spec.id)).state in ("exited", "oom_killed") and o,
                       timeout=timeout, what="the job's exit")
        read = lambda s: open(os.path.join(spec.log_dir, f"{s}.log")).read()   # noqa: E731
        return obs.exit_code, read("stdout"), read("stderr")
    finally:
        runc_driver.remove(spec.id)


@pytest.mark.root
@pytest.mark.parametrize("user", [None, "0"], ids=["default-user", "explicit-root"])
def test_a_hostile_job_is_refused_or_contained(runc_driver, attack_image, tmp_path, user):
    data = runc_driver.data_dir
    token = os.path.join(data, "agent-token")
    with open(token, "w") as f:
        f.write("raftctl-agent-secret-token")
    os.chmod(token, 0o600)
    job = {**JOB, "user": user, "command": ["/usr/bin/python3", "/app/attack.py"]}
    t = time.monotonic()
    code, out, err = run_job(runc_driver, attack_image, job, tmp_path, env={"TOKEN": token, "AGENT_DATA": data})
    took = time.monotonic() - t
    results = {r["attack"]: r for r in map(json.loads, out.splitlines())}
    done = results.pop("done", {})
    assert code == 0 and done.get("uid") == (0 if user else 65534), (code, out, err)
    print(f"\n{len(results)} attacks as uid {done['uid']} in {took:.1f} s:")
    for name, r in results.items():
        print(f"  {name:36} {'SUCCEEDED' if r['succeeded'] else 'refused'}: {r.get('detail')}")
    succeeded = [n for n, r in results.items() if r["succeeded"]]
    assert succeeded == [], f"attacks that worked: {succeeded}"
    assert len(results) >= 39
    # what refused them: nothing of the host's /etc or the agent's files is there at all; host trees are read-only
    for name in ("read /etc/shadow", "read the agent token", "list the agent data dir"):
        assert results[name]["detail"] == "ENOENT", results[name]
    for p in ("/usr/x", "/usr/bin/x", "/usr/lib/x", "/etc/hosts", "/etc/resolv.conf", "/etc/passwd"):
        assert results["write " + p]["detail"] in ("EROFS", "EACCES"), results["write " + p]
    # the seccomp profile (EPERM even where the kernel would let an unprivileged process through)
    for name in ("unshare -U", "clone CLONE_NEWUSER", "keyctl", "add_key", "userfaultfd", "bpf", "setns",
                 "ptrace attach", "process_vm_readv", "finit_module", "clock_settime", "settimeofday", "reboot",
                 "mount tmpfs", "personality ADDR_NO_RANDOMIZE", "io_uring_setup", "open_by_handle_at"):
        assert results[name]["detail"] == "EPERM", results[name]
    assert results["unshare -U via x32"]["detail"] in ("EPERM", "ENOSYS"), results["unshare -U via x32"]
    bomb = results["fork bomb"]["detail"]
    assert bomb["errno"] == "EAGAIN" and bomb["forked"] < PIDS, bomb
    assert os.path.exists(token) and open(token).read() == "raftctl-agent-secret-token"
    pid = os.fork()                                  # the host can still fork
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.root
def test_busybox_unshare_and_mount_fail_inside(runc_driver, busybox_store, tmp_path):
    store, digest = busybox_store
    job = {**JOB, "base": "scratch", "command": ["sh", "-c", "unshare -U id; echo unshare=$?; "
                                                              "mount -t tmpfs tmpfs /tmp; echo mount=$?"]}
    code, out, err = run_job(runc_driver, digest, job, tmp_path)
    assert code == 0 and "unshare=1" in out and "mount=" in out and "mount=0" not in out, (out, err)
    assert "Operation not permitted" in err, err


CAPS = "grep -E '^(Uid|CapEff|CapBnd|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status"


@pytest.mark.root
@pytest.mark.parametrize("user, caps, uid, eff", [
    (None, [], "65534", 0),
    ("0", [], "0", 0),
    ("0", ["CAP_NET_BIND_SERVICE"], "0", 1 << 10),
    ("1000", ["CAP_NET_BIND_SERVICE", "CAP_KILL"], "1000", (1 << 10) | (1 << 5)),
])
def test_uid_0_and_capabilities_appear_only_when_asked_for(runc_driver, busybox_store, tmp_path, user, caps, uid, eff):
    store, digest = busybox_store
    job = {**JOB, "base": "scratch", "user": user, "capabilities": caps, "command": ["sh", "-c", CAPS]}
    code, out, err = run_job(runc_driver, digest, job, tmp_path)
    status = dict(line.split(":", 1) for line in out.splitlines())
    status = {k: v.split() for k, v in status.items()}
    assert code == 0 and status["Uid"][0] == uid, (out, err)
    assert int(status["CapEff"][0], 16) == eff and int(status["CapBnd"][0], 16) == eff
    assert int(status["CapAmb"][0], 16) == (eff if uid not in ("0",) else 0)
    assert status["Seccomp"] == ["2"] and status["NoNewPrivs"] == ["1"]


@pytest.mark.root
def test_a_host_tree_holding_an_agent_secret_is_never_mounted(runc_driver, attack_image, tmp_path):
    from raftctl.agent.runtime.runc import RuncDriver
    drv = RuncDriver(runc_driver.data_dir, runc_driver.images, private_paths=["/usr/share/doc/agent-token"])
    try:
        spec = spec_of(JOB, rootfs=drv.prepare_image(attack_image), log_dir=str(tmp_path / "logs"))
        with pytest.raises(RuntimeError_, match="private to the agent"):
            drv.create(spec)
        assert drv.status(spec.id).state == "missing"
    finally:
        drv.close()


# -- no silent downgrade (item 10) -----------------------------------------------------------------------
def test_root_with_the_process_runtime_is_refused_unless_allowed(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from raftctl.cli.main import cli
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    argv = ["agent", "--id", "m1", "--server", "http://127.0.0.1:9", "--token", "t", "--data-dir", str(tmp_path),
            "--runtime", "process"]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2 and "--allow-unisolated" in r.output and "NOTHING" not in r.output, r.output
    assert "nothing isolated" in r.output
    assert not os.path.exists(tmp_path / "process")             # refused before any driver was made
    config = tmp_path / "agent.toml"
    config.write_text('allow_unisolated = "yes"\n')
    r = CliRunner().invoke(cli, ["agent", "--config", str(config), *argv[1:]])
    assert r.exit_code != 0 and "allow_unisolated" in r.output, r.output


def test_check_unisolated_table():
    import click

    from raftctl.cli.agent import check_unisolated
    for runtime, euid, allowed in [("process", 1000, False), ("process", 0, True), ("runc", 0, False),
                                   ("sim", 0, False)]:
        check_unisolated(runtime, euid, allowed)
    with pytest.raises(click.UsageError, match="allow-unisolated"):
        check_unisolated("process", 0, False)


def test_raftctl_up_passes_the_flag_only_for_the_process_runtime(tmp_path):
    from raftctl.devcluster import LocalCluster, Proc
    for runtime, flagged in [("process", True), ("sim", False), ("runc", False)]:
        c = LocalCluster(str(tmp_path / runtime), replicas=1, agents=1, runtime=runtime)
        agent = next(p for p in c.procs if p.role == "agent")
        assert isinstance(agent, Proc)
        assert ("--allow-unisolated" in c.agent_argv(agent)) is flagged, runtime


@pytest.mark.root
def test_a_submount_of_a_host_tree_stays_read_only(runc_driver, busybox_store, tmp_path, monkeypatch):
    """`base: host` binds are recursively read-only (rro): a read-only bind of a tree used to leave the
    mounts below it writable. The tree here is the test's own, with a tmpfs mounted inside it."""
    from raftctl.agent import rootfs
    store, digest = busybox_store
    tree = tmp_path / "hosttree"
    (tree / "sub").mkdir(parents=True)
    rootfs.mount("tmpfs", str(tree / "sub"), "tmpfs", 0, "size=1m")
    try:
        monkeypatch.setattr(bundle, "HOST_BASE_DIRS", (str(tree),))
        script = f"echo x > {tree}/x; echo top=$?; echo x > {tree}/sub/x; echo sub=$?"
        job = {**JOB, "user": "0", "command": ["sh", "-c", script]}
        code, out, err = run_job(runc_driver, digest, job, tmp_path)
        assert code == 0 and "top=1" in out and "sub=1" in out, (out, err)
        assert err.count("Read-only file system") == 2, err
        assert not (tree / "x").exists() and not (tree / "sub" / "x").exists()
    finally:
        rootfs.umount(str(tree / "sub"))
