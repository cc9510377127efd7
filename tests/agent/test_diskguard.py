"""Disk pressure (raftctl/agent/diskguard.py): below --disk-reserve, the containers that wrote the most are evicted.

The decision is a pure function (a table); the walk runs on real files; the check runs against the real free
space of this machine's disk, with a reserve set above it; the whole path (a container filling a small tmpfs data
dir through the runc driver, the check, the supervisor's stop, the space given back) runs for real as root.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import pytest

from raftctl.agent.diskguard import (EVICT_FLOOR, DiskGuard, Filesystem, Usage, evictions, filesystem, measure,
                                     parse_reserve, reserve_bytes)
from raftctl.agent.runtime.base import Resources
from raftctl.agent.supervisor import Supervised, Supervisor
from raftctl.clock import SYSTEM
from raftctl.errors import ValidationError
from tests.agent.conftest import job_spec

MiB = 1 << 20


# -- the decision ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("usages, free, reserve, evicted", [
    ({"a": 50, "b": 10}, 100, 100, []),                     # at the reserve: nothing
    ({"a": 50, "b": 10}, 120, 100, []),
    ({"a": 50, "b": 10}, 80, 100, ["a"]),                   # the largest writer alone brings it back
    ({"a": 10, "b": 50, "c": 30}, 20, 100, ["b", "c"]),     # largest first, until free + held >= reserve
    ({"a": 10, "b": 50, "c": 30}, 0, 100, ["b", "c", "a"]),
    ({"a": 30, "b": 30}, 90, 100, ["a"]),                   # ties by id
    ({"a": 0.5, "b": 0.2}, 0, 100, []),                     # under the floor: evicting frees nothing
    ({"a": 5, "b": 0.5}, 0, 100, ["a"]),
    ({"a": 50}, 0, 0, []),                                  # reserve 0: eviction off
    ({}, 0, 100, []),
])
def test_evictions_take_the_largest_writers_until_the_reserve_is_back(usages, free, reserve, evicted):
    got = evictions({k: Usage(int(v * MiB), 1) for k, v in usages.items()},
                    Filesystem(free=free * MiB, total=1000 * MiB), reserve * MiB)
    assert list(got) == evicted
    for cid in got:
        assert got[cid].startswith("evicted: disk pressure on the machine")
        assert f"had written {usages[cid] * MiB / MiB:.1f} MiB" in got[cid]


def test_a_walk_cut_short_says_so_in_the_reason():
    got = evictions({"a": Usage(5 * MiB, 200_000, partial=True)}, Filesystem(0, 100 * MiB), 10 * MiB)
    assert "5.0 MiB (or more: too many files to count)" in got["a"]


@pytest.mark.parametrize("text, total, want", [
    ("10%", 1000, 100), ("0%", 1000, 0), ("12.5%", 1000, 125), ("2Gi", 1 << 40, 2 << 30), ("500M", 10, 500_000_000),
    ("0", 1000, 0), (" 5% ", 200, 10),
])
def test_the_reserve_is_a_share_of_the_filesystem_or_a_size(text, total, want):
    assert reserve_bytes(parse_reserve(text), total) == want


@pytest.mark.parametrize("text", ["ten%", "100%", "-1%", "2GB", "lots", ""])
def test_a_bad_reserve_is_refused_naming_the_flag(text):
    with pytest.raises(ValidationError) as e:
        parse_reserve(text)
    assert e.value.field == "--disk-reserve"


# -- the walk -------------------------------------------------------------------------------------------------
def _write(path: str, n: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(n))
        f.flush()
        os.fsync(f.fileno())


def test_measure_counts_blocks_once_per_inode_and_stays_inside(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    _write(str(d / "a"), 3 * MiB)
    os.link(d / "a", d / "sub" / "a-again")                # a second link: counted once
    with open(d / "sparse", "wb") as f:                    # 1 GiB long, 4 KiB written: what it uses counts
        f.seek(1 << 30)
        f.write(b"x")
    outside = tmp_path / "outside"
    _write(str(outside), 5 * MiB)
    os.symlink(outside, d / "link")                        # not followed
    u = measure([str(d), str(tmp_path / "missing")])
    assert 3 * MiB <= u.bytes < 3 * MiB + 256 * 1024, u
    assert u.entries == 5 and not u.partial


def test_measure_stops_at_its_entry_bound(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"x" * 5000)
    u = measure([str(tmp_path)], max_entries=20)
    assert u.partial and u.entries == 20 and u.bytes > 0
    assert not measure([str(tmp_path)], max_entries=50).partial


# -- the check, against this machine's real free space ---------------------------------------------------------
async def test_the_check_marks_the_largest_writers_and_leaves_small_ones(tmp_path):
    dirs = {}
    for cid, size in (("big", 6 * MiB), ("mid", 3 * MiB), ("small", EVICT_FLOOR // 4)):
        dirs[cid] = tmp_path / cid
        dirs[cid].mkdir()
        _write(str(dirs[cid] / "f"), size)
    containers = {cid: Supervised(placement={"id": cid, "job": "j"}, state="running") for cid in dirs}
    containers["stopping"] = Supervised(placement={"id": "stopping", "job": "j"}, state="running", stopping=True)
    dirs["stopping"] = dirs["big"]
    free = filesystem(str(tmp_path)).free
    evicted: list[str] = []
    # a reserve 8 MiB above what is free now: the big writer's 6 MiB is not enough, the next one's 3 MiB is
    guard = DiskGuard(lambda cid: [str(dirs[cid])], containers, str(tmp_path), ("bytes", free + 8 * MiB), SYSTEM,
                      on_evict=lambda sup, reason: evicted.append(sup.placement["id"]))
    got = await guard.check()
    assert list(got) == ["big", "mid"] == evicted
    assert containers["big"].evict == got["big"] and containers["mid"].evict == got["mid"]
    assert containers["small"].evict is None and containers["stopping"].evict is None
    assert guard.last_usage["big"].bytes >= 6 * MiB and "stopping" not in guard.last_usage
    assert await guard.check() == {}           # the two already marked are not walked again; small is under the floor
    assert guard.evicted == 2

    calm = DiskGuard(lambda cid: [str(dirs[cid])], {"x": Supervised(placement={"id": "x"}, state="running")},
                     str(tmp_path), ("percent", 0.0), SYSTEM)
    assert await calm.check() == {} and calm.last_usage == {}    # reserve 0: nothing walked


async def test_a_failed_check_is_logged_and_the_loop_goes_on(tmp_path, caplog):
    class Clock:
        slept = 0

        async def sleep(self, s: float) -> None:
            Clock.slept += 1
            if Clock.slept > 3:
                raise asyncio.CancelledError
            await asyncio.sleep(0)

    guard = DiskGuard(lambda cid: [], {}, str(tmp_path / "no-such-dir"), ("percent", 10.0), Clock())  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await guard.run()
    assert Clock.slept == 4
    assert caplog.text.count("disk pressure check failed") == 4     # one at once, one after each of 3 sleeps


# -- for real: runc, a tmpfs data dir, the supervisor ----------------------------------------------------------
@pytest.mark.root
async def test_a_container_filling_the_disk_is_evicted_and_its_space_given_back(root_runc, busybox_store, make_spec,
                                                                               tmp_path):
    from raftctl.agent.runtime.runc import RuncDriver

    store, _ = busybox_store
    data = tmp_path / "agent"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data)], check=True)
    drv = RuncDriver(str(data), store)
    containers: dict[str, Supervised] = {}
    tasks: dict[str, asyncio.Task] = {}
    try:
        hog = make_spec(["sh", "-c", "dd if=/dev/zero of=/data/fill bs=1M count=40 && touch /data/done && "
                                     "sleep 300"], job="hog", resources=Resources(cpu=500, memory=256 * MiB, pids=64))
        quiet = make_spec(["sh", "-c", "echo hi > /data/note && sleep 300"], job="quiet")
        specs = {s.id: s for s in (hog, quiet)}
        containers.update({s.id: Supervised(placement={"id": s.id, "job": s.job, "version": 1, "replica": 0, "ports": {},
                                                  "spec": job_spec(restart={"policy": "never"})})
                      for s in (hog, quiet)})
        reports: list[Any] = []

        class NoMetrics:
            def exited(self, job: str, oom: bool) -> None: ...
            def restarted(self, job: str) -> None: ...
            def health_checked(self, kind: str, ok: bool, seconds: float) -> None: ...

        tasks.update({cid: asyncio.create_task(Supervisor(sup, drv, report=reports.append, metrics=NoMetrics(),
                                                     container_spec=lambda p: specs[p["id"]], host="127.0.0.1").run())
                 for cid, sup in containers.items()})
        done = os.path.join(drv.bundle(hog.id), "data", "done")
        for _ in range(200):
            if os.path.exists(done):
                break
            await asyncio.sleep(0.05)
        assert os.path.exists(done), reports
        before = filesystem(str(data))
        assert before.free < before.total // 2

        guard = DiskGuard(drv.writable_paths, containers, str(data), parse_reserve("50%"), SYSTEM)
        got = await guard.check()
        assert list(got) == [hog.id]
        await asyncio.wait_for(tasks[hog.id], 30)     # stopped; its policy ("never") ends its supervisor
        ended = [r for r in reports if r.placement == hog.id and r.state == "exited"]
        assert ended and ended[-1].reason.startswith("evicted: disk pressure"), reports
        assert not os.path.exists(drv.bundle(hog.id))                  # its /data went with it
        after = filesystem(str(data))
        assert after.free - before.free >= 38 * MiB, (before, after)
        assert drv.status(quiet.id).state == "running"
        assert await guard.check() == {}                               # back above the reserve
    finally:
        for sup in containers.values():
            sup.stopping = True
        for t in tasks.values():
            t.cancel()
        for id in drv.list_existing():
            drv.stop(id, 1.0)
            drv.remove(id)
        drv.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_raftctl_agent_refuses_a_bad_reserve_naming_the_flag(tmp_path):
    from click.testing import CliRunner

    from raftctl.cli.main import cli
    argv = ["agent", "--id", "m1", "--server", "http://127.0.0.1:9", "--token", "t", "--data-dir", str(tmp_path),
            "--runtime", "sim", "--disk-reserve", "2GB"]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2 and "--disk-reserve: '2GB' is not a size; use 2Gi" in r.output, r.output
