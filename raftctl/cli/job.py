"""raftctl job run|list|status|stop|versions|rollback|scale."""
from __future__ import annotations

import os
import sys
import time

import click

from raftctl.cli.base import client, output, structured
from raftctl.cli.output import emit, fail
from raftctl.cli.progress import follow


def _age(ms: int | None) -> str:
    if not ms:
        return ""
    s = max(0, int(time.time() - ms / 1000))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _read_spec(file: str) -> dict:
    from raftctl import gate
    from raftctl.statemachine.spec import parse_spec

    with open(file, "rb") as f:
        text = f.read(gate.MAX_BYTES + 1)  # one byte past the gate's bound is enough for it to refuse (never a
        # /dev/zero read to the end); parse_spec decodes through the gate
    ext = os.path.splitext(file)[1].lstrip(".").lower()
    raw = parse_spec(text, {"yml": "yaml"}.get(ext, ext) if ext in ("yaml", "yml", "json", "toml") else None)
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        fail(f"{file}: name: a job spec needs a name")
    return raw


def register(cli: click.Group) -> None:
    @cli.group()
    def job() -> None:
        """Submit and inspect jobs (what to run, never where)."""

    @job.command("run")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--cas", type=int, default=None, help="Only if the job is at this modify index (0: must not exist).")
    @click.option("--wait/--detach", default=None,
                  help="Follow the rollout until every replica is healthy (default: follow, with a progress bar on "
                       "a terminal and plain lines otherwise; with -o json or -o yaml, detach).")
    @click.option("--timeout", "wait_timeout", default=600, show_default=True, help="Seconds to follow at most.")
    @click.pass_context
    def run(ctx: click.Context, file: str, cas: int | None, wait: bool | None, wait_timeout: int) -> None:
        """Submit a job spec (YAML, JSON or TOML) as a new version and follow its rollout."""
        raw = _read_spec(file)
        data = client(ctx).request("PUT", f"/v1/jobs/{raw['name']}", raw, query={"cas": cas})
        if data.get("unchanged"):
            text_out = f"job {data['name']} unchanged (version {data['version']})"
        else:
            text_out = f"job {data['name']} version {data['version']} submitted (index {data['index']})"
        emit(ctx, data, text=text_out)
        if wait is None:
            wait = not structured(ctx)
        if wait:
            ok = follow(client(ctx), raw["name"], data["version"], fmt=output(ctx), timeout=wait_timeout)
            if not ok:
                sys.exit(1)

    @job.command("plan")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.pass_context
    def plan(ctx: click.Context, file: str) -> None:
        """Show what submitting FILE would place, stop and update, and where; writes nothing."""
        raw = _read_spec(file)
        data = client(ctx).request("POST", f"/v1/jobs/{raw['name']}/plan", raw)
        rows = [("place", f"replica {p['replica']}", p["machine"], " ".join(f"{k}={v}" for k, v in p["ports"].items()))
                for p in data["place"]]
        rows += [("stop", p["placement"], "", p["reason"]) for p in data["stop"]]
        rows += [("preempt", p["placement"], "", f"job {p['job']}") for p in data["preempt"]]
        rows += [("update", p["placement"], p["machine"], f"version {p['from_version']} -> {data['version']}")
                 for p in data["update"]]
        text = (f"job {data['job']}: version {data['version']}" + (" (new)" if data["new_version"] else " (unchanged)")
                + (f"\npending: {data['pending']}" if data["pending"] else ""))
        emit(ctx, data, rows, ["action", "what", "machine", "detail"], text=text)

    @job.command("list")
    @click.pass_context
    def list_(ctx: click.Context) -> None:
        data = client(ctx).request("GET", "/v1/jobs")
        rows = [(j["name"], j["status"], j["version"], f"{j['counts']['healthy']}/{j['replicas']}",
                 j["counts"]["running"], j["counts"]["pending"]) for j in data["jobs"]]
        emit(ctx, data, rows, ["name", "status", "version", "healthy", "running", "pending"])

    @job.command("status")
    @click.argument("name")
    @click.pass_context
    def status(ctx: click.Context, name: str) -> None:
        """A job's replicas: machine, state, health, age; why any are pending."""
        c = client(ctx)
        j = c.request("GET", f"/v1/jobs/{name}")
        pl = c.request("GET", f"/v1/jobs/{name}/placements")
        rows = [(p["id"], p["replica"], p["version"], p["machine"], p["state"], p["health"], p["desired"],
                 _age(p["created_at"])) for p in pl["placements"]]
        text = (f"job {name}: {j['status']}, version {j['version']}, {j['counts']['healthy']}/{j['replicas']} healthy"
                + (f"\npending: {j['pending_reason']}" if j.get("pending_reason") else ""))
        emit(ctx, {"job": j, "placements": pl["placements"]}, rows,
             ["placement", "replica", "version", "machine", "state", "health", "desired", "age"], text=text)

    @job.command("stop")
    @click.argument("name")
    @click.option("--purge", is_flag=True, help="Also forget the job and its history.")
    @click.pass_context
    def stop(ctx: click.Context, name: str, purge: bool) -> None:
        data = client(ctx).request("DELETE", f"/v1/jobs/{name}", query={"purge": "1" if purge else None})
        emit(ctx, data, text=f"job {name} stopping ({data['stopping']} replicas)")

    @job.command("versions")
    @click.argument("name")
    @click.pass_context
    def versions(ctx: click.Context, name: str) -> None:
        data = client(ctx).request("GET", f"/v1/jobs/{name}/versions")
        rows = [(v["version"], "*" if v["current"] else "", v["spec"]["image"], v["spec"]["replicas"],
                 v.get("rollback_of") or "", _age(v["submitted_at"])) for v in data["versions"]]
        emit(ctx, data, rows, ["version", "current", "image", "replicas", "rollback of", "age"])

    @job.command("rollback")
    @click.argument("name")
    @click.argument("version", type=int)
    @click.pass_context
    def rollback(ctx: click.Context, name: str, version: int) -> None:
        data = client(ctx).request("POST", f"/v1/jobs/{name}/rollback", {"version": version})
        emit(ctx, data, text=f"job {name} rolled back to version {version} (now version {data['version']})")

    @job.command("promote")
    @click.argument("name")
    @click.pass_context
    def promote(ctx: click.Context, name: str) -> None:
        """Promote a deploy's canaries; the rest rolls to the new version."""
        data = client(ctx).request("POST", f"/v1/jobs/{name}/promote")
        emit(ctx, data, text=f"job {name}: canaries promoted")

    @job.command("scale")
    @click.argument("name")
    @click.argument("replicas", type=int)
    @click.pass_context
    def scale(ctx: click.Context, name: str, replicas: int) -> None:
        data = client(ctx).request("POST", f"/v1/jobs/{name}/scale", {"replicas": replicas})
        emit(ctx, data, text=f"job {name} scaled {data['previous']} -> {data['replicas']}")
