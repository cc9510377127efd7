"""raftctl discover SERVICE [--watch]: where is a service running?"""
from __future__ import annotations

import click

from raftctl.cli.base import client, structured
from raftctl.cli.output import emit, record


def _rows(ans: dict) -> list[tuple]:
    return [(e["address"], e["port"], e["machine"], e["placement"], e["version"],
             "/".join(e["fault_domain"].get(k, "") for k in ("region", "zone", "rack"))) for e in ans["endpoints"]]


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("service")
    @click.option("--watch", is_flag=True, help="Print the answer again every time it changes (blocking queries).")
    @click.option("--near", default=None, help="Fault domain to prefer, e.g. zone=z1.")
    @click.option("--consistent", is_flag=True, help="Read through the leader.")
    @click.pass_context
    def discover(ctx: click.Context, service: str, watch: bool, near: str | None, consistent: bool) -> None:
        """Healthy, published endpoints of SERVICE."""
        c = client(ctx)
        query = {"near": near, "consistent": "1" if consistent else None}
        ans = c.request("GET", f"/v1/discovery/{service}", query=query)
        headers = ["address", "port", "machine", "placement", "version", "fault domain"]
        while True:
            if watch and structured(ctx):
                record(ctx, ans)
            else:
                emit(ctx, ans, _rows(ans), headers,
                     text=f"{service}: {len(ans['endpoints'])} endpoints (index {ans['index']})")
            if not watch:
                return
            index = ans["index"]
            while ans["index"] == index:
                ans = c.request("GET", f"/v1/discovery/{service}", query={**query, "index": index, "wait": "30s"},
                                timeout=40)
