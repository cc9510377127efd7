"""Two dev clusters on one machine (issue 17, item 5): their agents' host-port ranges never overlap while both
run, because containers with network: host bind wildcard ports; a stopped cluster frees its slot and a resumed
one takes its old slot back when it is free."""
from __future__ import annotations

import pytest

from raftctl import devcluster
from raftctl.devcluster import LocalCluster, agent_ports


def ports_of(c: LocalCluster, agent: str = "m1") -> tuple[int, int]:
    argv = c.agent_argv(next(p for p in c.agents if p.id == agent))
    lo, hi = argv[argv.index("--ports") + 1].split("-")
    return int(lo), int(hi)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(devcluster, "PORTS_REGISTRY", str(tmp_path / "registry"))


def test_slot_zero_keeps_the_readme_ports():
    assert agent_ports(1, 0) == "21000-21199" and agent_ports(3, 0) == "23000-23199"


def test_running_clusters_get_disjoint_ranges_and_a_stopped_one_frees_its_slot(tmp_path, registry):
    clusters = [LocalCluster(str(tmp_path / f"c{k}"), agents=3, runtime="sim") for k in range(3)]
    ranges = [set(range(ports_of(c, m)[0], ports_of(c, m)[1] + 1)) for c in clusters for m in ("m1", "m2", "m3")]
    assert sum(len(r) for r in ranges) == len(set().union(*ranges))  # no port in two ranges
    assert [c.ports_slot for c in clusters] == [0, 1, 2]
    clusters[0].stop()
    newcomer = LocalCluster(str(tmp_path / "c3"), agents=1, runtime="sim")
    assert ports_of(newcomer) == (21000, 21199)  # slot 0 again
    for c in clusters[1:] + [newcomer]:
        c.stop()


def test_a_resumed_cluster_takes_its_slot_back(tmp_path, registry):
    first = LocalCluster(str(tmp_path / "a"), agents=1, runtime="sim")
    second = LocalCluster(str(tmp_path / "b"), agents=1, runtime="sim")
    ports_of(first), ports_of(second)
    second.write_files()
    assert second.ports_slot == 1
    first.stop()
    second.stop()
    resumed = LocalCluster(str(tmp_path / "b"), runtime="sim")
    assert resumed.ports_slot == 1 and ports_of(resumed) == (21200, 21399)
    resumed.stop()


def test_with_every_slot_taken_the_cluster_still_starts_on_slot_zero(tmp_path, registry, capsys):
    held = [LocalCluster(str(tmp_path / f"h{k}"), agents=1, runtime="sim") for k in range(devcluster.PORT_SLOTS)]
    for c in held:
        ports_of(c)
    extra = LocalCluster(str(tmp_path / "extra"), agents=1, runtime="sim")
    assert ports_of(extra) == (21000, 21199)
    assert "port slots is in use" in capsys.readouterr().err
    for c in held + [extra]:
        c.stop()
