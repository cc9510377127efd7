"""raftctl tls init: a CA and certificates for the control replicas and the agents."""
from __future__ import annotations

import click

from raftctl.cli.output import emit


def register(cli: click.Group) -> None:
    @cli.group()
    def tls() -> None:
        """TLS certificates for the HTTP API (servers, agents) and the CA that clients verify them with."""

    @tls.command("init")
    @click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
                  help="Where to write ca.crt/ca.key, server.crt/.key and agent-<id>.crt/.key.")
    @click.option("--server-name", "server_names", multiple=True,
                  help="DNS name of a control replica (repeat); goes into the server certificate's SANs.")
    @click.option("--server-ip", "server_ips", multiple=True,
                  help="IP address of a control replica (repeat). Default SANs: localhost, 127.0.0.1.")
    @click.option("--agent", "agents", multiple=True,
                  help="ID[=SAN,SAN...]: a certificate for an agent (repeat), e.g. m1=10.0.1.11,m1.example.com.")
    @click.option("--days", default=825, show_default=True, type=click.IntRange(1, 3650),
                  help="Validity of the server and agent certificates (the CA gets ten years).")
    @click.option("--force", is_flag=True, help="Reissue certificates that exist (the CA is always kept).")
    @click.pass_context
    def init(ctx: click.Context, directory: str, server_names: tuple[str, ...], server_ips: tuple[str, ...],
             agents: tuple[str, ...], days: int, force: bool) -> None:
        """Make (or reuse) the CA in DIR and issue certificates; keys are written 0600.

        Run it again with more --agent flags to add agents under the same CA.
        """
        from raftctl.tls import init_tls

        issued = init_tls(directory, server_names=list(server_names), server_ips=list(server_ips),
                          agents=list(agents), days=days, force=force)
        lines = [f"wrote {p}" for p in issued.written] + [f"kept  {p}" for p in issued.kept]
        emit(ctx, {"dir": issued.directory, "written": issued.written, "kept": issued.kept},
             text="\n".join(lines) + f"\nCA certificate for clients: {issued.directory}/ca.crt "
                                     "(keep ca.key off the cluster machines)")
