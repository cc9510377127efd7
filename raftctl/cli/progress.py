"""Follow a job's rollout: a progress bar on a terminal, plain progress lines when stdout is not one
(a pipe, a log, CI), events as JSON lines or YAML documents for scripts (-o json, -o yaml)."""
from __future__ import annotations

import json
import sys
import time

import click

from raftctl.cli.output import dump
from raftctl.client import Client


def _state(c: Client, name: str, specs: dict[int, dict | None]) -> tuple[dict, int, int]:
    """The job, its healthy current replicas and how many it wants. A replica is current when its version's
    spec is the job's (as for the rollout controller: a version that returns to an earlier spec, e.g. a file
    edited back, keeps the replicas already running it). ``specs``: version -> spec, filled as needed (a
    version's spec never changes)."""
    job = c.request("GET", f"/v1/jobs/{name}")
    specs[job["version"]] = job["spec"]
    pl = c.request("GET", f"/v1/jobs/{name}/placements")["placements"]
    if any(p["version"] not in specs for p in pl):
        specs.update((v["version"], v["spec"]) for v in c.request("GET", f"/v1/jobs/{name}/versions")["versions"])
        specs.update((p["version"], None) for p in pl if p["version"] not in specs)  # pruned: not current
    current = [p for p in pl if p["desired"] == "run" and specs.get(p["version"]) == job["spec"]
               and p["state"] == "running" and p["health"] == "healthy"]
    return job, len(current), job["replicas"]


def follow(c: Client, name: str, version: int, *, fmt: str = "table", timeout: float,
           plain: bool | None = None) -> bool:
    """True when every replica of the version is healthy (or the deploy succeeded). ``fmt`` json or yaml:
    the job's events, one JSON line or YAML document each. ``plain`` (default: stdout is not a terminal):
    one line per event and per change of progress."""
    as_json = fmt in ("json", "yaml")
    deadline = time.monotonic() + timeout
    seq = c.request("GET", "/v1/events")["index"]
    bar = None
    if plain is None:
        plain = not sys.stdout.isatty()
    plain = plain and not as_json
    last: tuple | None = None
    specs: dict[int, dict | None] = {}

    def line(text: str) -> None:
        click.echo(text)  # one whole line at a time (click flushes it)

    if not as_json and not plain:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
        bar.start()
        task = bar.add_task(f"{name} v{version}", total=1, status="")
    try:
        while time.monotonic() < deadline:
            evs = c.request("GET", "/v1/events", query={"index": seq, "wait": "1s"}, timeout=10)
            for e in evs["events"]:
                if e.get("job") == name:
                    if as_json:
                        click.echo(json.dumps(e, sort_keys=True) if fmt == "json" else "---\n" + dump("yaml", e))
                    elif plain:
                        line(f"  {e['kind']}: {e['message']}")
                    elif bar is not None:
                        bar.console.print(f"  {e['kind']}: {e['message']}")
            seq = max(seq, evs["index"])
            job, healthy, want = _state(c, name, specs)
            dep = job.get("deployment") or {}
            status = dep.get("status", "") if dep.get("version") == job["version"] else ""
            held = f" ({dep['held']})" if dep.get("held") else ""
            if bar is not None:
                bar.update(task, completed=healthy, total=max(want, 1), status=status + held)
            if plain and (healthy, want, status, held) != last:
                last = (healthy, want, status, held)
                line(f"{name} v{version}: {healthy}/{want} healthy" + (f", deployment {status}" if status else "")
                     + held)
            if status in ("failed", "reverted"):
                if plain:
                    line(f"{name} v{version}: deployment {status}" + (f": {dep['reason']}" if dep.get("reason") else ""))
                return False
            if healthy >= want and (not status or status == "successful") and job["version"] >= version:
                if plain:
                    line(f"{name} v{version}: rolled out, {healthy}/{want} healthy")
                return True
        if plain:
            line(f"{name} v{version}: not rolled out after {timeout:g}s (still rolling; `raftctl job status {name}`)")
        return False
    finally:
        if bar is not None:
            bar.stop()
