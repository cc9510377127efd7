"""Cgroup scopes of a cluster's machines go when their last container does, also when two machines of one cluster
on one host lose their last containers at once (real runc driver, root): tests/agent/test_bridge_cluster.py saw
one run in six leave ``/raftctl-<cluster>/hb`` behind in every hierarchy, the second prune having found the
first one's exclusive lock and skipped."""
from __future__ import annotations

import fcntl
import os
import threading
import uuid

import pytest

from raftctl.agent.runtime import cgroups
from raftctl.agent.runtime.runc import SCOPE_LOCKS, RuncDriver

pytestmark = pytest.mark.root


def scope_dirs(cluster: str) -> list[str]:
    return sorted(p for root in cgroups.hierarchies() for p in (f"{root}/raftctl-{cluster}",) if os.path.isdir(p))


def test_a_prune_in_progress_on_another_machine_does_not_make_this_one_skip(root_runc, tmp_path):
    cluster = uuid.uuid4().hex[:12]
    m2 = RuncDriver(str(tmp_path / "m2"), cluster=cluster, machine="m2")
    made = []
    try:
        for root in cgroups.hierarchies():
            for d in (f"{root}/raftctl-{cluster}", f"{root}/raftctl-{cluster}/m1", f"{root}/raftctl-{cluster}/m2"):
                os.mkdir(d)
                made.append(d)
        os.makedirs(SCOPE_LOCKS, exist_ok=True)
        turn = os.open(os.path.join(SCOPE_LOCKS, f"{cluster}.prune"), os.O_RDWR | os.O_CREAT, 0o600)
        scope = os.open(os.path.join(SCOPE_LOCKS, f"{cluster}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # machine m1's agent is pruning: it holds its turn and the cluster's scope lock
            fcntl.flock(turn, fcntl.LOCK_EX)
            fcntl.flock(scope, fcntl.LOCK_EX)
            # meanwhile m2's last container goes (it was never created: remove still prunes)
            t = threading.Thread(target=m2.remove, args=("gone",))
            t.start()
            t.join(0.5)
            assert t.is_alive(), "m2's prune did not wait for m1's"
            cgroups.remove_if_empty(f"raftctl-{cluster}/m1")     # m1's prune, done
            fcntl.flock(scope, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)
            t.join(30)
            assert not t.is_alive()
        finally:
            os.close(turn)
            os.close(scope)
        assert scope_dirs(cluster) == []      # m2's scope, and the cluster's with it
    finally:
        m2.close()
        for d in reversed(made):
            if os.path.isdir(d):
                os.rmdir(d)
        for name in (f"{cluster}.prune", f"{cluster}.lock"):
            try:
                os.unlink(os.path.join(SCOPE_LOCKS, name))
            except FileNotFoundError:
                pass
