"""raftctl token create|list|revoke."""
from __future__ import annotations

import click

from raftctl.cli.base import client
from raftctl.cli.output import emit


def register(cli: click.Group) -> None:
    @cli.group()
    def token() -> None:
        """Manage API tokens (only their hashes are stored)."""

    @token.command("create")
    @click.option("--role", required=True, type=click.Choice(["admin", "deployer", "operator", "reader", "agent"]))
    @click.option("--name", required=True, help="A unique name for the token.")
    @click.option("--machine", default="", help="For agent tokens: the machine it may act for.")
    @click.pass_context
    def create(ctx: click.Context, role: str, name: str, machine: str) -> None:
        """Create a token; the secret is shown once."""
        data = client(ctx).request("POST", "/v1/tokens", {"role": role, "name": name, "machine": machine})
        emit(ctx, data, text=data["token"])

    @token.command("list")
    @click.pass_context
    def list_(ctx: click.Context) -> None:
        data = client(ctx).request("GET", "/v1/tokens")
        emit(ctx, data, [(t["name"], t["role"], t.get("machine") or "", t["create_index"]) for t in data["tokens"]],
             ["name", "role", "machine", "created"])

    @token.command("revoke")
    @click.argument("name")
    @click.pass_context
    def revoke(ctx: click.Context, name: str) -> None:
        data = client(ctx).request("DELETE", f"/v1/tokens/{name}")
        emit(ctx, data, text=f"token {name} revoked")
