"""raftctl top: the efficiency view (GET /v1/efficiency) as tables: capacity vs allocated vs used per
fault domain, machine and job; idle and stranded capacity; how many machines the placements could fit into."""
from __future__ import annotations

import time
from typing import Any

import click

from raftctl.cli.base import client, output, structured
from raftctl.cli.output import dump
from raftctl.statemachine.records import LEVELS
from raftctl.statemachine.units import format_cpu, format_size


def _cpu(v: float) -> str:
    return format_cpu(int(round(v)))


def _mem(v: float) -> str:
    return format_size(int(round(v)))


def _usage(row: dict[str, Any], res: str, fmt: Any) -> str:
    """Used, or '?' when no placement there has a usage report yet."""
    return fmt(row["used"][res]) if row["reported"][res] else "?"


def _resource_cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for res, fmt in (("cpu", _cpu), ("memory", _mem)):
        cap, alloc = row["capacity"][res], row["allocated"][res]
        cells += [f"{fmt(alloc)}/{fmt(cap)}", _usage(row, res, fmt),
                  fmt(row["idle"][res]), fmt(row["stranded"][res]) if row["stranded"][res] else "-"]
    return cells


RES_HEADERS = ["cpu alloc/cap", "used", "idle", "stranded", "mem alloc/cap", "used", "idle", "stranded"]


def render(view: dict[str, Any], level: str, machines: bool) -> Any:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cl = view["cluster"]
    fit = cl["fit"]
    bound = fit["lower_bound"] if fit["lower_bound"] is not None else "more than the cluster"
    head = Text.assemble(
        ("cluster ", "bold"),
        f"{cl['machines']} machines ({cl['machines_in_use']} in use), {cl['placements']} placements; "
        f"cpu {_cpu(cl['allocated']['cpu'])}/{_cpu(cl['capacity']['cpu'])} allocated, "
        f"{_usage(cl, 'cpu', _cpu)} used; memory {_mem(cl['allocated']['memory'])}/{_mem(cl['capacity']['memory'])} "
        f"allocated, {_usage(cl, 'memory', _mem)} used\n",
        ("fit ", "bold"),
        f"the placements could run on {bound} machine(s) at best, {fit['first_fit_decreasing']} by "
        f"first-fit-decreasing" + (f" ({fit['unplaceable']} fit nowhere)" if fit["unplaceable"] else "")
        + f"; stranded: cpu {_cpu(cl['stranded']['cpu'])}, memory {_mem(cl['stranded']['memory'])}")
    parts: list[Any] = [head]

    t = Table(title=f"by {level}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in [level, "machines", "placements", *RES_HEADERS]:
        t.add_column(h, justify="left" if h == level else "right")
    for d in view["domains"][level]:
        t.add_row(d["domain"], str(d["machines"]), str(d["placements"]), *_resource_cells(d))
    parts.append(t)

    if machines:
        t = Table(title="by machine", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for h in ["machine", "state", "zone/rack", "placements", *RES_HEADERS]:
            t.add_column(h, justify="left" if h in ("machine", "state", "zone/rack") else "right")
        for m in view["machines"]:
            dom = "/".join(m["fault_domain"][lv] for lv in LEVELS[1:])
            t.add_row(m["id"], m["state"], dom, str(m["placements"]), *_resource_cells(m))
        parts.append(t)

    t = Table(title="by job", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ("job", "replicas", "cpu alloc", "cpu used", "cpu util", "mem alloc", "mem used", "mem util"):
        t.add_column(h, justify="left" if h == "job" else "right")
    for j in view["jobs"]:
        util = {r: (f"{100 * j['utilisation'][r]:.0f}%" if j["utilisation"][r] is not None else "?")
                for r in ("cpu", "memory")}
        t.add_row(j["job"], str(j["replicas"]), _cpu(j["allocated"]["cpu"]), _usage(j, "cpu", _cpu), util["cpu"],
                  _mem(j["allocated"]["memory"]), _usage(j, "memory", _mem), util["memory"])
    parts.append(t)
    return Group(*parts)


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--by", "level", type=click.Choice(LEVELS), default="zone", show_default=True,
                  help="Fault-domain level to group machines by.")
    @click.option("--machines/--no-machines", default=True, show_default=True, help="Show the per-machine table.")
    @click.option("-w", "--watch", "watch", type=float, default=None, metavar="SECONDS",
                  help="Refresh every SECONDS until interrupted.")
    @click.pass_context
    def top(ctx: click.Context, level: str, machines: bool, watch: float | None) -> None:
        """Efficiency: capacity vs allocated vs used per fault domain, machine and job; idle and stranded
        capacity; how many machines the current placements could fit into."""
        c = client(ctx)
        if structured(ctx):
            click.echo(dump(output(ctx), c.request("GET", "/v1/efficiency")))
            return
        from rich.console import Console

        console = Console()
        if watch is None:
            console.print(render(c.request("GET", "/v1/efficiency"), level, machines))
            return
        if watch <= 0:
            raise click.BadParameter("must be a positive number of seconds", param_hint="--watch")
        from rich.live import Live

        with Live(render(c.request("GET", "/v1/efficiency"), level, machines), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(render(c.request("GET", "/v1/efficiency"), level, machines), refresh=True)
