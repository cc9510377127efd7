"""raftctl: the command line. One module per command group; all talk through raftctl.client."""
from __future__ import annotations

import sys

import click

from raftctl.client import Client
from raftctl.errors import RaftctlError


def split_servers(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(s for s in v.replace(",", " ").split() if s)
    return out


class Group(click.Group):
    """Turns raftctl errors into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except RaftctlError as exc:
            message = exc.message.replace("\n", "; ")
            click.echo(f"error: {exc.field + ': ' if exc.field and not message.startswith(exc.field) else ''}{message}",
                       err=True)
            sys.exit(2 if exc.http_status and 400 <= exc.http_status < 500 else 1)


@click.group(cls=Group)
@click.option("--server", "servers", multiple=True, envvar="RAFTCTL_SERVER",
              help="API URL of a control replica (several allowed; failover between them).")
@click.option("--token", envvar="RAFTCTL_TOKEN", help="Bearer token (or RAFTCTL_TOKEN).")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table",
              help="Output format (wide: tables with more columns).")
@click.option("--tls-ca", envvar="RAFTCTL_CA_CERT", default=None, type=click.Path(dir_okay=False),
              help="CA certificate that https:// servers are verified with (or RAFTCTL_CA_CERT).")
@click.pass_context
def cli(ctx: click.Context, servers: tuple[str, ...], token: str | None, output: str, tls_ca: str | None) -> None:
    """raftctl: run services as many isolated replicas on many machines."""
    ctx.ensure_object(dict)
    ctx.obj["servers"] = split_servers(servers)
    ctx.obj["token"] = token
    ctx.obj["output"] = output
    ctx.obj["tls_ca"] = tls_ca


def client(ctx: click.Context) -> Client:
    return Client(ctx.obj["servers"], ctx.obj["token"], ca=ctx.obj.get("tls_ca"))


def _register() -> None:
    from raftctl.cli import agent, cluster, discover, image, job, logs, machine, server, snapshot, tls, token, top, up

    for mod in (server, agent, up, cluster, job, image, machine, discover, logs, token, top, tls, snapshot):
        mod.register(cli)


_register()


def main() -> None:
    cli(prog_name="raftctl", auto_envvar_prefix=None)


if __name__ == "__main__":
    main()
