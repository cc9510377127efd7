"""Per-host names carry the cluster's identity and the machine's (issue 17 item 5).

Placement ids are unique only within one cluster (``web-00001`` in every fresh cluster), so two clusters on one
machine must never name a cgroup (or any other per-host thing) by the placement id alone.
"""
from __future__ import annotations

import json
import os

import pytest

from raftctl.agent.config import IDENTITY_FILE, read_identity, settle_cluster_id
from raftctl.agent.runtime import cgroups
from raftctl.agent.runtime.base import Resources, RuntimeError_, cgroup_path, host_scope
from raftctl.clusterid import CLUSTER_ID_RE, derive_cluster_id
from raftctl.errors import ValidationError

from .conftest import wait_for

A, B = derive_cluster_id("secret of cluster A"), derive_cluster_id("secret of cluster B")


@pytest.mark.parametrize("one, other", [
    ((A, "m1", "web-00001"), (B, "m1", "web-00001")),     # two clusters, same machine id, same placement id
    ((A, "m1", "web-00001"), (A, "m2", "web-00001")),     # one cluster, two machines on one host (raftctl up)
    ((A, "m1", "web-00001"), (A, "m1", "web-00002")),
])
def test_two_owners_of_the_same_placement_id_get_different_cgroups(one, other):
    assert cgroup_path(*one) != cgroup_path(*other)
    assert not cgroup_path(*one).startswith(cgroup_path(*other) + "/")


def test_a_cgroup_path_names_cluster_machine_and_placement():
    assert cgroup_path(A, "m1", "web-00001") == f"/raftctl-{A}/m1/web-00001"
    assert host_scope(A, "m1") == f"raftctl-{A}/m1"


def test_the_cluster_id_is_derived_from_the_secret_stable_and_short():
    assert A == derive_cluster_id("secret of cluster A")          # every replica computes the same
    assert A != B and CLUSTER_ID_RE.match(A) and CLUSTER_ID_RE.match(B)


@pytest.mark.parametrize("cluster, machine", [
    (A, ".."), (A, "a/b"), (A, ""), (A, "-x"), ("ABCDEF012345", "m1"), ("0123", "m1"), ("../../etc/x", "m1"),
])
def test_names_that_could_escape_their_scope_are_refused(cluster, machine):
    with pytest.raises(RuntimeError_):
        cgroup_path(cluster, machine, "web-00001")


def test_the_first_answer_is_kept_and_another_cluster_is_refused(tmp_path):
    d = str(tmp_path)
    assert read_identity(d) is None
    assert settle_cluster_id(d, "m1", A) == A
    assert read_identity(d) == {"cluster": A, "machine": "m1"}
    assert settle_cluster_id(d, "m1", A) == A
    assert settle_cluster_id(d, "m1", None, asked=False) == A      # control plane silent: the kept id
    with pytest.raises(ValidationError) as exc:
        settle_cluster_id(d, "m1", B)                               # this data dir holds cluster A's containers
    assert exc.value.field == "--data-dir" and A in exc.value.message and B in exc.value.message
    assert read_identity(d) == {"cluster": A, "machine": "m1"}


def test_no_answer_and_nothing_kept_is_an_error_and_no_secret_gives_a_local_id(tmp_path):
    with pytest.raises(ValidationError) as exc:
        settle_cluster_id(str(tmp_path / "a"), "m1", None, asked=False)
    assert exc.value.field == "--server"
    local = settle_cluster_id(str(tmp_path / "b"), "m1", None)       # --insecure-dev control plane: no id
    assert CLUSTER_ID_RE.match(local) and settle_cluster_id(str(tmp_path / "b"), "m1", None) == local
    assert settle_cluster_id(str(tmp_path / "c"), "m1", None) != local


@pytest.mark.parametrize("answer", ["0123", "../x", "A" * 12, 12345])
def test_a_control_plane_answer_that_is_not_an_id_is_refused(tmp_path, answer):
    with pytest.raises(ValidationError) as exc:
        settle_cluster_id(str(tmp_path), "m1", answer)
    assert exc.value.field == "cluster" and not os.path.exists(tmp_path / IDENTITY_FILE)


# -- the runc driver (root and runc) -----------------------------------------------------------------

@pytest.mark.root
def test_runc_containers_of_two_clusters_with_one_placement_id_share_nothing(root_runc, busybox_store, make_spec,
                                                                             tmp_path):
    from raftctl.agent.runtime.runc import RuncDriver

    store, _ = busybox_store
    da, db = RuncDriver(str(tmp_path / "a"), store, cluster=A, machine="m1"), \
        RuncDriver(str(tmp_path / "b"), store, cluster=B, machine="m1")
    spec = make_spec(["sleep", "300"])
    try:
        for d in (da, db):
            d.create(spec)
            d.start(spec.id)
        pids = {d: wait_for(lambda d=d: d.status(spec.id).pid, what="running") for d in (da, db)}
        assert cgroups.children(f"/raftctl-{A}/m1") == [spec.id] == cgroups.children(f"/raftctl-{B}/m1")
        for d, other in ((da, db), (db, da)):
            cg = d.cgroup(spec.id)
            assert cg.path == f"/raftctl-{d.cluster}/m1/{spec.id}"
            with open(os.path.join(cg.memory_dir(), "cgroup.procs")) as f:
                procs = {int(x) for x in f.read().split()}
            assert pids[d] in procs and pids[other] not in procs
        da.stop(spec.id, 1.0)
        da.remove(spec.id)
        assert da.status(spec.id).state == "missing" and cgroups.children(f"/raftctl-{A}/m1") == []
        assert not [h for h in cgroups.hierarchies() if os.path.exists(f"{h}/raftctl-{A}")]   # emptied: pruned
        assert all(os.path.isdir(f"{h}/raftctl-{B}/m1/{spec.id}")
                   for h in cgroups.hierarchies() if os.path.isdir(f"{h}/raftctl-{B}"))
        assert db.status(spec.id).state == "running" and db.status(spec.id).pid == pids[db]
    finally:
        for d in (da, db):
            for id in d.list_existing():
                d.stop(id, 1.0)
                d.remove(id)
            d.close()


@pytest.mark.root
def test_a_driver_never_lists_another_clusters_container_in_its_data_dir(root_runc, busybox_store, make_spec,
                                                                         tmp_path):
    """A data dir reused by another cluster: its containers are not adopted, stopped or removed."""
    from raftctl.agent.runtime.runc import RuncDriver

    store, _ = busybox_store
    first = RuncDriver(str(tmp_path), store, cluster=A, machine="m1")
    spec = make_spec(["sleep", "300"])
    try:
        first.create(spec)
        first.start(spec.id)
        with open(os.path.join(first.bundle(spec.id), "owner.json")) as f:
            assert json.load(f) == {"cluster": A, "machine": "m1"}
        other = RuncDriver(str(tmp_path), store, cluster=B, machine="m1")
        assert other.list_existing() == []
        other.close()
        again = RuncDriver(str(tmp_path), store, cluster=A, machine="m1")    # an agent restart: adopted
        assert again.list_existing() == [spec.id] and again.status(spec.id).state == "running"
        assert again.cgroup(spec.id).path == f"/raftctl-{A}/m1/{spec.id}"
        again.close()
    finally:
        first.stop(spec.id, 1.0)
        first.remove(spec.id)
        first.close()


def test_an_agent_with_a_kept_id_is_not_held_up_by_a_silent_control_plane(tmp_path):
    """Containers of this cluster are adopted under the kept names even while no replica answers."""
    import asyncio
    import socket
    import time

    from raftctl.agent.control import cluster_identity
    from raftctl.devcluster import free_port

    with socket.socket() as s:                    # a port that refuses connections on loopback
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    asked, answered = asyncio.run(cluster_identity([url, f"http://127.0.0.1:{free_port()}"], "rct_x", "m1",
                                                   patience_s=0.5))
    assert (asked, answered) == (False, None) and time.monotonic() - t0 < 3
    settle_cluster_id(str(tmp_path), "m1", A)
    assert settle_cluster_id(str(tmp_path), "m1", answered, asked=asked) == A


@pytest.mark.root
def test_a_container_made_before_clusters_were_named_is_adopted_in_its_old_cgroup(root_runc, busybox_store,
                                                                                   make_spec, tmp_path):
    """After an upgrade the agent's own data dir holds containers with no owner.json, in /raftctl/<id>."""
    from raftctl.agent.runtime.runc import RuncDriver

    store, _ = busybox_store
    old = RuncDriver(str(tmp_path), store)                              # no cluster: the old naming
    spec = make_spec(["sleep", "300"], resources=Resources(memory=48 << 20))
    try:
        old.create(spec)
        old.start(spec.id)
        new = RuncDriver(str(tmp_path), store, cluster=A, machine="m1")
        assert new.list_existing() == [spec.id]
        cg = new.cgroup(spec.id)
        assert cg.path == f"/raftctl/{spec.id}" and new.stats(spec.id)["memory_limit"] == 48 << 20
        new.stop(spec.id, 1.0)
        new.remove(spec.id)
        assert not os.path.exists(cg.memory_dir()) and new.list_existing() == []
        new.close()
    finally:
        old.remove(spec.id)
        old.close()


def test_asking_for_the_cluster_id_backs_off_and_gives_up_on_the_injected_clock():
    """A minute of patience against a refusing port, on a fake clock: the retries double from 0.2 s up to 5 s and
    the ask gives up before the next wait would pass the patience, without a minute of real time."""
    import asyncio
    import socket
    import time

    from raftctl.agent.control import cluster_identity
    from raftctl.clock import FakeClock

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    clock = FakeClock()
    t0 = time.monotonic()
    assert asyncio.run(cluster_identity([url], "rct_x", "m1", patience_s=60.0, clock=clock)) == (False, None)
    assert clock.sleeps[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0] and set(clock.sleeps[6:]) == {5.0}
    assert 55.0 < sum(clock.sleeps) <= 60.0 and time.monotonic() - t0 < 10
