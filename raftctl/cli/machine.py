"""raftctl machine list|drain|undrain, raftctl deployment status, raftctl events."""
from __future__ import annotations

import time
from urllib.parse import urlencode

from typing import Any

import click

from raftctl.cli.base import client, structured
from raftctl.cli.output import emit, record, wide
from raftctl.statemachine.records import MACHINE_STATES
from raftctl.statemachine.units import format_cpu, format_size


def register(cli: click.Group) -> None:
    @cli.group()
    def machine() -> None:
        """Machines: state, fault domain, allocation; drain for maintenance."""

    @machine.command("list")
    @click.option("--state", "states", default=None, metavar="STATE[,STATE]",
                  help=f"Only machines in these states: {', '.join(MACHINE_STATES)}.")
    @click.pass_context
    def list_(ctx: click.Context, states: str | None) -> None:
        """Machines; `-o wide` adds each agent's own endpoint (GET /metrics, GET /v1/logs/<placement>)."""
        data = client(ctx).request("GET", "/v1/machines" + (f"?{urlencode({'state': states})}" if states else ""))
        rows = [(m["id"], m["state"], m["address"],
                 "/".join(m["fault_domain"].get(k, "") for k in ("region", "zone", "rack")),
                 f"{format_cpu(m['allocated']['cpu'])}/{format_cpu(m['resources']['cpu'])}",
                 f"{format_size(m['allocated']['memory'])}/{format_size(m['resources']['memory'])}",
                 m["placements"]) + ((m.get("api") or "-",) if wide(ctx) else ()) for m in data["machines"]]
        emit(ctx, data, rows, ["id", "state", "address", "fault domain", "cpu", "memory", "placements"]
             + (["endpoint"] if wide(ctx) else []))

    @machine.command("drain")
    @click.argument("machine_id", required=False)
    @click.option("--domain", default=None, help="Drain every machine of a fault domain, e.g. rack=r1.")
    @click.option("--deadline", default=None, help="Force what is left after this long, e.g. 10m.")
    @click.pass_context
    def drain(ctx: click.Context, machine_id: str | None, domain: str | None, deadline: str | None) -> None:
        """Move every replica away within each job's disruption budget; the machine ends `drained`."""
        c = client(ctx)
        ids = _select(c, machine_id, domain)
        body = {"deadline": deadline} if deadline else {}
        for mid in ids:
            c.request("POST", f"/v1/machines/{mid}/drain", body)
        emit(ctx, {"draining": ids}, text=f"draining {', '.join(ids)}; watch with `raftctl machine list`")

    @machine.command("undrain")
    @click.argument("machine_id", required=False)
    @click.option("--domain", default=None)
    @click.pass_context
    def undrain(ctx: click.Context, machine_id: str | None, domain: str | None) -> None:
        c = client(ctx)
        ids = _select(c, machine_id, domain)
        for mid in ids:
            c.request("POST", f"/v1/machines/{mid}/undrain")
        emit(ctx, {"undrained": ids}, text=f"undrained {', '.join(ids)}")

    def _select(c: Any, machine_id: str | None, domain: str | None) -> list[str]:
        if bool(machine_id) == bool(domain):
            raise click.UsageError("give a machine id or --domain level=value")
        if machine_id:
            return [machine_id]
        level, _, value = domain.partition("=")  # type: ignore[union-attr]
        if level not in ("region", "zone", "rack") or not value:
            raise click.UsageError("--domain must be region=..., zone=... or rack=...")
        ids = [m["id"] for m in c.request("GET", "/v1/machines")["machines"]
               if m["fault_domain"].get(level) == value]
        if not ids:
            raise click.UsageError(f"no machine in {domain}")
        return ids

    @cli.group()
    def deployment() -> None:
        """Rolling deploys."""

    @deployment.command("status")
    @click.argument("name")
    @click.pass_context
    def status(ctx: click.Context, name: str) -> None:
        c = client(ctx)
        job = c.request("GET", f"/v1/jobs/{name}")
        dep = job.get("deployment") or {}
        pl = c.request("GET", f"/v1/jobs/{name}/placements")["placements"]
        live = [p for p in pl if p["desired"] == "run" and p["state"] not in ("lost", "stopped")]
        new = [p for p in live if p["version"] == job["version"] and p["health"] == "healthy"]
        text = (f"job {name} version {job['version']}: deployment {dep.get('status', 'none')}, "
                f"{len(new)}/{job['replicas']} healthy on the current version"
                + (f"\n{dep['held']}" if dep.get("held") else "") + (f"\n{dep['reason']}" if dep.get("reason") else ""))
        emit(ctx, {"deployment": dep, "healthy_current": len(new)}, text=text)

    @cli.command()
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new events (blocking queries).")
    @click.pass_context
    def events(ctx: click.Context, follow: bool) -> None:
        """Decisions of the scheduler and controllers: placements, losses, deploy and drain steps."""
        c = client(ctx)
        after = 0
        while True:
            data = c.request("GET", "/v1/events", query={"index": after, "wait": "30s"} if follow and after else
                             ({"index": after} if after else None), timeout=40)
            for e in data["events"]:
                if structured(ctx):
                    record(ctx, e)
                else:
                    stamp = time.strftime("%H:%M:%S", time.localtime(e["at"] / 1000))
                    click.echo(f"{stamp}  {e['kind']:<18} {e['message']}")
            after = max(after, data["index"])
            if not follow:
                return
