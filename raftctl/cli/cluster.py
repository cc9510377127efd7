"""raftctl cluster status|add-member|remove-member."""
from __future__ import annotations

from typing import Any

import click

from raftctl.cli.base import client
from raftctl.cli.output import emit
from raftctl.client import Client


def register(cli: click.Group) -> None:
    @cli.group()
    def cluster() -> None:
        """The control replicas: leader, term, lag, membership."""

    @cluster.command("status")
    @click.pass_context
    def status(ctx: click.Context) -> None:
        """Leader, term, commit/applied index and every member's lag."""
        c = client(ctx)
        st = c.request("GET", "/v1/status")
        if st.get("leader_api") and not st.get("leadership"):
            try:  # the leader's view includes the controllers and the failover monitor
                st = Client([st["leader_api"]], c.token, retry_for=2, ca=c.ca).request("GET", "/v1/status")
            except Exception:
                pass
        rows = [(m.get("id") or "", m["raft"], m.get("api") or "",
                 "leader" if m["leader"] else ("follower" if m.get("voter", True) else "learner"),
                 m.get("lag", ""), {True: "yes", False: "no"}.get(m.get("connected"), "")) for m in st["members"]]
        text = (f"leader {st['leader']} term {st['term']} commit {st['commit_index']} applied {st['applied_index']} "
                f"state index {st['index']} (answered by {st['node']}, {st['state']})")
        lead = st.get("leadership") or {}
        fo = lead.get("failover")
        if fo:
            text += (f"\nfailover: ttl {fo['ttl_s']}s, mass-loss guard "
                     + ("ACTIVE (re-placement rate-limited; silent: " + ", ".join(fo["silent"]) + ")"
                        if fo["guard_active"] else "off")
                     + (f", silent: {', '.join(fo['silent'])}" if fo["silent"] and not fo["guard_active"] else ""))
        emit(ctx, st, rows, ["id", "raft", "api", "role", "lag", "connected"], text=text)

    @cluster.command("add-member")
    @click.option("--raft", "raft_addr", required=True, help="The new replica's Raft host:port.")
    @click.option("--api", default="", help="The new replica's API URL.")
    @click.option("--id", "node_id", default="", help="The new replica's name.")
    @click.pass_context
    def add_member(ctx: click.Context, raft_addr: str, api: str, node_id: str) -> None:
        """Add a replica (start it first with --join and --peer listing the current members). It joins as a
        learner, counted in no majority; the leader makes it a voter once it has caught up."""
        data = _to_leader(ctx).request("POST", "/v1/members", {"raft": raft_addr, "api": api, "id": node_id})
        emit(ctx, data, text=f"member {raft_addr} added as a learner; it becomes a voter once it has caught up "
                             f"(`raftctl cluster status`)")

    @cluster.command("remove-member")
    @click.argument("raft_addr")
    @click.pass_context
    def remove_member(ctx: click.Context, raft_addr: str) -> None:
        """Remove a replica by its Raft host:port."""
        data = _to_leader(ctx).request("DELETE", f"/v1/members/{raft_addr}")
        emit(ctx, data, text=f"member {raft_addr} removed")

    def _to_leader(ctx: click.Context) -> Any:
        c = client(ctx)
        st = c.request("GET", "/v1/status")
        if st.get("leader_api"):
            return Client([st["leader_api"]] + c.servers, c.token, ca=c.ca)
        return c
