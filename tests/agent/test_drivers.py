"""The process and sim drivers, ContainerSpec from a placement, and the OCI config."""
from __future__ import annotations

import os
import signal
import sys

from raftctl.agent.runtime import bundle
from raftctl.agent.runtime.base import ContainerSpec, Resources
from raftctl.agent.runtime.process import ProcessDriver
from raftctl.agent.runtime.sim import SimDriver, SimScript, SimWorld
from tests.agent.conftest import job_spec, wait_for

JOB = job_spec(name="web", image="web:1", base="host", command=["server", "--port", "${PORT_HTTP}"],
               env={"MODE": "prod"}, user=None, resources={"cpu": 250, "memory": 64 << 20, "pids": 128},
               network="host", ports=[{"name": "http", "static": None, "to": None}])
PLACEMENT = {"id": "web-3-a1", "job": "web", "version": 2, "replica": 3, "ports": {"http": 31001}}

def test_spec_from_placement():
    s = ContainerSpec.from_placement(PLACEMENT, JOB, rootfs="/img", log_dir="/logs", image="sha256:" + "a" * 64)
    assert s.command == ["server", "--port", "31001"]
    assert s.env["PORT_HTTP"] == "31001" and s.env["RAFTCTL_JOB"] == "web" and s.env["RAFTCTL_REPLICA"] == "3"
    assert s.env["MODE"] == "prod" and "PATH" in s.env
    assert s.resources == Resources(cpu=250, memory=64 << 20, pids=128)
    assert s.uid_gid == (65534, 65534) and s.version == 2 and s.base == "host"
    assert ContainerSpec.from_dict(s.to_dict()) == s

def test_oci_config_limits_and_privileges():
    s = ContainerSpec.from_placement(PLACEMENT, JOB, rootfs="/img", log_dir="/logs")
    cfg = bundle.config(s, cgroups_path="/raftctl/x", data_dir="/d", host_binds=["/usr"], memsw=True)
    r = cfg["linux"]["resources"]
    assert r["cpu"]["quota"] == 25_000 and r["cpu"]["period"] == 100_000
    assert r["memory"] == {"limit": 64 << 20, "swap": 64 << 20} and r["pids"] == {"limit": 128}
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "mount", "uts", "ipc"}
    p = cfg["process"]
    assert p["noNewPrivileges"] and p["user"] == {"uid": 65534, "gid": 65534}
    assert p["capabilities"]["effective"] == [] and "CAP_NET_RAW" not in p["capabilities"]["bounding"]
    assert cfg["root"]["readonly"] is True
    assert any(m["destination"] == "/usr" and "ro" in m["options"] for m in cfg["mounts"])
    assert p["args"] == ["server", "--port", "31001"]      # no init given: the command is PID 1
    with_init = bundle.config(s, cgroups_path="/x", data_dir=None, host_binds=[], memsw=False,
                              init="/usr/bin/tini-static")
    assert with_init["process"]["args"] == [bundle.INIT_PATH, "-g", "--", "server", "--port", "31001"]
    assert {"destination": bundle.INIT_PATH, "type": "bind", "source": "/usr/bin/tini-static",
            "options": ["bind", "ro", "nosuid", "nodev"]} in with_init["mounts"]
    bridged = ContainerSpec.from_dict({**s.to_dict(), "network": "bridge", "user": "0"})
    cfg = bundle.config(bridged, cgroups_path="/x", data_dir=None, host_binds=[], memsw=False, netns="/run/netns/n")
    assert {"type": "network", "path": "/run/netns/n"} in cfg["linux"]["namespaces"]
    assert cfg["process"]["capabilities"]["effective"] == []        # root too gets no capability unless asked
    asked = ContainerSpec.from_dict({**bridged.to_dict(), "capabilities": ["CAP_KILL"]})
    cfg = bundle.config(asked, cgroups_path="/x", data_dir=None, host_binds=[], memsw=False)
    assert cfg["process"]["capabilities"]["effective"] == ["CAP_KILL"]

def test_process_driver_runs_reports_exit_and_adopts(tmp_path):
    drv = ProcessDriver(str(tmp_path))
    def spec(id, cmd):
        return ContainerSpec(id=id, job="j", replica=0, image="sha256:" + "0" * 64, rootfs=str(tmp_path / "none"),
                             command=cmd, log_dir=str(tmp_path / "logs" / id), env={"HELLO": "world"})
    drv.create(spec("a", [sys.executable, "-c", "import os,time; print(os.environ['HELLO'], flush=True); time.sleep(60)"]))
    drv.start("a")
    obs = drv.status("a")
    assert obs.state == "running" and obs.pid
    wait_for(lambda: "world" in open(tmp_path / "logs" / "a" / "stdout.log").read(), what="output")
    again = ProcessDriver(str(tmp_path))                  # the agent restarted
    assert again.list_existing() == ["a"] and again.status("a").pid == obs.pid
    os.kill(obs.pid, signal.SIGKILL)
    obs = wait_for(lambda: (o := again.status("a")).state == "exited" and o, what="exit")
    assert obs.exit_code == 137
    drv.create(spec("b", [sys.executable, "-c", "raise SystemExit(4)"]))
    drv.start("b")
    assert wait_for(lambda: (o := drv.status("b")).state == "exited" and o).exit_code == 4
    drv.create(spec("c", [sys.executable, "-c", "import time; time.sleep(60)"]))
    drv.start("c")
    assert drv.stop("c", grace_s=2).exit_code == 128 + signal.SIGTERM
    assert drv.exec("c", [sys.executable, "-c", "print('x')"]) == (0, "x\n")
    for id in ("a", "b", "c"):
        drv.remove(id)
    assert drv.list_existing() == [] and drv.status("a").state == "missing"

def test_sim_driver_scripts_and_world_survives_restart():
    now = [0.0]
    world = SimWorld()
    drv = SimDriver(clock=lambda: now[0], world=world,
                    scripts={"crash": SimScript(exit_after_s=2, exit_code=3), "hog": SimScript(oom_after_s=1)})
    for i, job in enumerate(["web", "crash", "hog"]):
        drv.create(ContainerSpec(id=f"c{i}", job=job, replica=0, image="sha256:" + "0" * 64, rootfs="/",
                                 command=["x"], log_dir="/tmp/none"))
        drv.start(f"c{i}")
    now[0] = 2.5
    assert [drv.status(f"c{i}").state for i in range(3)] == ["running", "exited", "oom_killed"]
    assert drv.status("c1").exit_code == 3
    again = SimDriver(clock=lambda: now[0], world=world)
    assert again.list_existing() == ["c0", "c1", "c2"] and again.status("c0").pid == drv.status("c0").pid
    again.kill("c0")
    assert again.status("c0").exit_code == 137
    assert again.stats("c0")["memory_bytes"] > 0

def test_sim_scale_500_containers():
    drv = SimDriver()
    for i in range(500):
        drv.create(ContainerSpec(id=f"c{i}", job="web", replica=i, image="sha256:" + "0" * 64, rootfs="/",
                                 command=["x"], log_dir="/tmp/none"))
        drv.start(f"c{i}")
    assert sum(drv.status(f"c{i}").state == "running" for i in range(500)) == 500


def test_the_v1_cgroup_mounts_are_read_once(monkeypatch, tmp_path):
    """/proc/self/mountinfo is read once per process (the hierarchies are mounted at boot), not on every
    Cgroup.of: twice per container create and once per container per stats pass. An empty answer is read again."""
    from raftctl.agent.runtime import cgroups
    info = tmp_path / "mountinfo"
    info.write_text("30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n"
                    "31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory\n")
    real_open, reads = open, []

    def counting_open(path, *a, **kw):
        if path == "/proc/self/mountinfo":
            reads.append(path)
            path = str(info) if len(reads) > 1 else os.devnull    # the first read finds nothing mounted
        return real_open(path, *a, **kw)
    monkeypatch.setattr(cgroups, "_v1_mounts", {})
    monkeypatch.setattr("builtins.open", counting_open)
    assert cgroups.v1_mounts() == {}
    for _ in range(3):
        assert cgroups.v1_mounts() == {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory"}
    assert len(reads) == 2
