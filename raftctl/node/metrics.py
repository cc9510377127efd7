"""GET /metrics: Prometheus text format, one registry per replica."""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from raftctl.node.api import REPLICA, perm


class ReplicaCollector:
    def __init__(self, replica: object) -> None:
        self.replica = replica

    def collect(self):  # type: ignore[no-untyped-def]
        r = self.replica
        if getattr(r, "raft", None) is None:
            return
        st = r.status()
        for name, value, doc in (
            ("raftctl_raft_term", st["term"] or 0, "Current Raft term"),
            ("raftctl_raft_commit_index", st["commit_index"] or 0, "Raft commit index"),
            ("raftctl_raft_applied_index", st["applied_index"] or 0, "Raft last applied index"),
            ("raftctl_raft_log_entries", st["log_len"] or 0, "Entries in the Raft log"),
            ("raftctl_raft_is_leader", 1 if st["state"] == "leader" else 0, "1 on the leader"),
            ("raftctl_raft_state_changes", r.leader_changes, "Raft role changes seen by this replica"),
            ("raftctl_state_index", st["index"], "State machine index"),
            ("raftctl_proposer_entries", r.proposer.entries if r.proposer else 0, "Log entries proposed here"),
            ("raftctl_proposer_commands", r.proposer.commands if r.proposer else 0, "Commands proposed here"),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        counts = r.read(lambda s: (len(s.jobs), len(s.placements), len(s.machines)))
        for name, value in zip(("raftctl_jobs", "raftctl_placements", "raftctl_machines"), counts):
            g = GaugeMetricFamily(name, f"Number of {name.split('_')[1]} in the state")
            g.add_metric([], value)
            yield g


@perm("read")
async def handler(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    registry = getattr(replica, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(ReplicaCollector(replica))
        replica._metrics_registry = registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})
