"""Disk pressure end to end (root, runc): a job that fills its /data past the agent's --disk-reserve is evicted by
its agent, and the control plane shows why; a quiet job on the same machine runs on.

The agent's reserve is a size set a little below the free space of the disk its data dir is on, measured as the
cluster starts, so the 96 MiB the job writes crosses it and nothing else this test does can: the pressure is
this machine's real disk, not a fake.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest

from raftctl.agent.diskguard import filesystem
from raftctl.devcluster import LocalCluster
from tests.agent.conftest import root_runc  # noqa: F401  (the loud skip without root and runc)

from .conftest import client_for, wait_until
from .test_images_e2e import cli, site, write_spec

pytestmark = pytest.mark.integration

MiB = 1 << 20
HOG = {"name": "hog", "image": "disk:1", "base": "host", "network": "host",
       "command": ["sh", "-c", "dd if=/dev/zero of=/data/fill bs=1M count=96 && sync && sleep 300"],
       "replicas": 1, "resources": {"cpu": "200m", "memory": "64Mi", "pids": 32},
       "restart": {"policy": "never"}}
QUIET = {**HOG, "name": "quiet", "command": ["sh", "-c", "echo hi > /data/note && sleep 300"]}


@pytest.mark.root
def test_a_job_filling_the_disk_is_evicted_and_says_why(root_runc, tmp_path_factory, tmp_path):  # noqa: F811
    base = tmp_path_factory.mktemp("disk-pressure")
    if filesystem(str(base)).free < 1024 * MiB:
        pytest.skip("less than 1 GiB free where the test cluster lives")
    reserve = filesystem(str(base)).free - 48 * MiB     # the job's 96 MiB takes the disk below it
    c = LocalCluster(str(base), replicas=3, agents=1, runtime="runc",
                     agent_args=["--heartbeat", "300ms", "--disk-reserve", str(reserve)])
    c.start(timeout=60)
    try:
        c.wait_agents(60)
        cli(c, "image", "build", site(tmp_path, "disk\n"), "--name", "disk:1", "--base", "host")
        cli(c, "job", "run", "--detach", write_spec(tmp_path, QUIET))
        cli(c, "job", "run", "--detach", write_spec(tmp_path, HOG))

        def placement(job: str) -> dict | None:
            pl = client_for(c).request("GET", f"/v1/jobs/{job}/placements")["placements"]
            return pl[0] if pl else None

        # the agent checks at its start and every 10 s
        hog = wait_until(lambda: (p := placement("hog")) and p["state"] == "exited" and p, timeout=60,
                         what="the hog evicted")
        assert hog["reason"].startswith("evicted: disk pressure on the machine"), hog
        written = re.search(r"had written ([0-9.]+) MiB to /data and its root$", hog["reason"])
        # past the 48 MiB margin (a check may land while dd still writes), at most its file and directories
        assert written and 48.0 <= float(written.group(1)) < 97.0, hog["reason"]
        assert f"below the reserve of {reserve / MiB:.1f} MiB" in hog["reason"]
        agent_dir = c.agents[0].data_dir
        bundle = os.path.join(agent_dir, "runc", "containers", hog["id"])
        wait_until(lambda: not os.path.exists(bundle), timeout=30, what="its writable layers removed")  # reported first
        assert filesystem(agent_dir).free > reserve
        quiet = placement("quiet")
        assert quiet is not None and quiet["state"] == "running", quiet
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)
