"""raftctl logs JOB [--replica N] [-f]: a replica's stdout/stderr, from its machine's agent."""
from __future__ import annotations

import sys
import urllib.request

import click

from raftctl.cli.base import client


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("job")
    @click.option("--replica", default=0, show_default=True, type=int)
    @click.option("--stderr", is_flag=True, help="stderr instead of stdout.")
    @click.option("-f", "--follow", is_flag=True)
    @click.option("--tail", default=65536, show_default=True, help="Bytes of history to show first.")
    @click.pass_context
    def logs(ctx: click.Context, job: str, replica: int, stderr: bool, follow: bool, tail: int) -> None:
        """Show a replica's logs (stdout by default)."""
        c = client(ctx)
        pl = [p for p in c.request("GET", f"/v1/jobs/{job}/placements")["placements"]
              if p["replica"] == replica and p["state"] not in ("lost",)]
        if not pl:
            raise click.ClickException(f"job {job} has no replica {replica}")
        p = sorted(pl, key=lambda p: (p["desired"] != "run", -p["create_index"]))[0]
        machines = {m["id"]: m for m in c.request("GET", "/v1/machines")["machines"]}
        api = machines.get(p["machine"], {}).get("api")
        if not api:
            raise click.ClickException(f"machine {p['machine']} has no agent endpoint for logs")
        url = (f"{api}/v1/logs/{p['id']}?stream={'stderr' if stderr else 'stdout'}&tail={tail}"
               + ("&follow=1" if follow else ""))
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {c.token}"})
        with c.urlopen(req, None if follow else 30) as r:
            while True:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
                if not chunk:
                    break
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
