"""report.md and timeline.svg for a checked run (hand-written SVG: no plotting dependency).

The timeline, left to right in seconds since the faults began:
- top rows: each fault as a bar (red: partitions, orange: process faults), labelled;
- one row per replica: dark green where it said it was leader, light green follower,
  yellow candidate, grey where its /v1/status did not answer; term numbers where they change;
- bottom: each operation's latency (log scale), one dot per op: ok blue (reads) / green (writes),
  fail grey, info red at the top edge (never answered).
"""
from __future__ import annotations

import html
import json
import math
import os
from typing import Any

from history import iter_json_lines, read_history

W, LEFT, RIGHT = 1400, 110, 20
ROW = 22


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def timeline_svg(run_dir: str) -> str:
    meta = json.load(open(os.path.join(run_dir, "meta.json")))
    t0 = meta.get("t0_ns") or meta.get("started")
    end = meta.get("ended", t0 + 1)
    span = max(1e9, end - t0)
    x = lambda t: LEFT + (W - LEFT - RIGHT) * (t - t0) / span  # noqa: E731
    parts: list[str] = []
    y = 30
    # axis
    step = 10 if span / 1e9 <= 300 else 60
    faults = [f for f in _lines(run_dir, "faults.jsonl") if f.get("type") in ("start", "end")]
    starts = [f for f in faults if f["type"] == "start"]
    ends = [f for f in faults if f["type"] == "end"]
    rows = 2
    for i, f in enumerate(starts):
        e = next((g for g in ends if g["time"] >= f["time"] and g["kind"] == f["kind"]), None)
        t1 = e["time"] if e else end
        color = "#d9534f" if ("partition" in f["event"] or f["kind"] == "isolate-leader") else "#f0ad4e"
        yy = y + (i % rows) * ROW
        label = f["kind"] + (f" {f['done'].get('target')}" if f["done"].get("target") else "")
        parts.append(f'<rect x="{x(f["time"]):.1f}" y="{yy}" width="{max(2, x(t1) - x(f["time"])):.1f}" '
                     f'height="{ROW - 4}" fill="{color}" opacity="0.8"><title>{_esc(json.dumps(f["done"])[:400])}</title></rect>')
        parts.append(f'<text x="{x(f["time"]) + 2:.1f}" y="{yy + 13}" font-size="11">{_esc(label)}</text>')
    parts.append(f'<text x="4" y="{y + 13}" font-size="12" font-weight="bold">faults</text>')
    y += rows * ROW + 10
    heal = meta.get("heal_ns")
    # replicas
    status = _lines(run_dir, "status.jsonl")
    nodes = meta.get("nodes") or sorted({s["node"] for s in status})
    colors = {"leader": "#1e7b34", "follower": "#a8d5a2", "candidate": "#f7e463"}
    for node in nodes:
        ss = [s for s in status if s["node"] == node]
        parts.append(f'<text x="4" y="{y + 13}" font-size="12">{_esc(node)}</text>')
        last_term = None
        for a, b in zip(ss, ss[1:] + [None]):
            t1 = b["time"] if b else a["time"] + 500_000_000
            fill = colors.get(a.get("state"), "#999") if a.get("ok") else "#ddd"
            parts.append(f'<rect x="{x(a["time"]):.1f}" y="{y}" width="{max(0.5, x(t1) - x(a["time"])):.1f}" '
                         f'height="{ROW - 4}" fill="{fill}"/>')
            if a.get("ok") and a.get("term") != last_term:
                last_term = a.get("term")
                parts.append(f'<text x="{x(a["time"]) + 1:.1f}" y="{y + 12}" font-size="9">{_esc(last_term)}</text>')
        y += ROW
    y += 10
    # latencies
    h = 220
    top = y
    parts.append(f'<text x="4" y="{top + 12}" font-size="12" font-weight="bold">op latency</text>')
    lo, hi = 1e-3, 20.0
    ly = lambda s: top + h - h * (math.log10(max(lo, min(hi, s))) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731
    for tick in (0.001, 0.01, 0.1, 1, 10):
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{ly(tick):.1f}" y2="{ly(tick):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 40}" y="{ly(tick) + 4:.1f}" font-size="10">{tick:g}s</text>')
    path = os.path.join(run_dir, "history.jsonl")
    hist = read_history(path) if os.path.exists(path) else []
    invokes: dict[int, Any] = {}
    for op in hist:
        if op.type == "invoke":
            invokes[op.process] = op
            continue
        inv = invokes.pop(op.process, None)
        if inv is None:
            continue
        lat = (op.time - inv.time) / 1e9
        if op.type == "ok":
            color = "#337ab7" if op.f == "read" else "#2ca02c"
            yy = ly(lat)
        elif op.type == "fail":
            color, yy = "#888", ly(lat)
        else:
            color, yy = "#d62728", top + 4
        parts.append(f'<circle cx="{x(inv.time):.1f}" cy="{yy:.1f}" r="1.6" fill="{color}"/>')
    y = top + h + 20
    grid = []
    for s in range(0, int(span / 1e9) + 1, step):
        xx = x(t0 + s * 1e9)
        grid.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="25" y2="{y - 15}" stroke="#eee"/>')
        parts.append(f'<text x="{xx - 8:.1f}" y="{y}" font-size="10">{s}s</text>')
    parts[:0] = grid  # under the bars
    if heal:
        parts.append(f'<line x1="{x(heal):.1f}" x2="{x(heal):.1f}" y1="25" y2="{y - 15}" stroke="#000" '
                     f'stroke-dasharray="4,3"/><text x="{x(heal) + 3:.1f}" y="22" font-size="11">heal</text>')
    legend = ("leader dark green, follower light green, candidate yellow, no answer grey; "
              "ops: read ok blue, write ok green, fail grey, info (unanswered) red at the top")
    parts.append(f'<text x="{LEFT}" y="{y + 18}" font-size="11">{_esc(legend)}</text>')
    y += 30
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="4" y="16" font-size="13" font-weight="bold">seed {_esc(meta.get("seed"))}, '
            f'{len(nodes)} replicas, {_esc(meta.get("duration"))} s of faults</text>\n{body}\n</svg>\n')


def _lines(run_dir: str, name: str) -> list[dict[str, Any]]:
    p = os.path.join(run_dir, name)
    return list(iter_json_lines(p)) if os.path.exists(p) else []


def _fmt(v: Any) -> str:
    return {True: "pass", False: "**FAIL**"}.get(v, str(v)) if isinstance(v, bool) or v is None else str(v)


def write(run_dir: str, res: dict[str, Any]) -> None:
    try:
        svg = timeline_svg(run_dir)
        with open(os.path.join(run_dir, "timeline.svg"), "w") as f:
            f.write(svg)
        picture = "![timeline](timeline.svg)"
    except Exception as exc:  # a broken picture must not hide the verdicts
        picture = f"(timeline not drawn: {exc!r})"
    ck = res["checkers"]
    lines = [f"# jepsen-style run: seed {res.get('seed')}, {len(res.get('nodes') or [])} replicas, "
             f"{res.get('duration')} s of faults", "",
             f"**Verdict: {_fmt(res['valid'])}**", "", picture, "",
             "| checker | verdict | detail |", "|---|---|---|"]
    for name, r in ck.items():
        detail = _detail(name, r).replace("|", "/")
        lines.append(f"| {name} | {_fmt(r.get('valid'))} | {detail} |")
    lines += ["", "## Operations", "", "```", json.dumps(res.get("ops"), indent=1), "```", ""]
    faults = [f for f in _lines(run_dir, "faults.jsonl") if f.get("type") == "start"]
    meta_t0 = json.load(open(os.path.join(run_dir, "meta.json"))).get("t0_ns", 0)
    lines += ["## Faults", "", "| at (s) | kind | target | lasted (s) | verified |", "|---|---|---|---|---|"]
    for f in faults:
        v = f["done"].get("verified")
        ver = v.get("ok") if isinstance(v, dict) else v
        lines.append(f"| {(f['time'] - meta_t0) / 1e9:.1f} | {f['kind']} | {f['done'].get('target', '')} | "
                     f"{f['event']['duration']} | {ver} |")
    for name, r in ck.items():
        if r.get("valid") is False:
            lines += ["", f"## Why {name} failed", "", "```", json.dumps(r, indent=1, default=str)[:6000], "```"]
    lines += ["", "Files: schedule.json (replay with `run.py --replay`), history.jsonl, status.jsonl, "
              "answers.jsonl, health.jsonl, jobs.jsonl, faults.jsonl, logs/, results.json.", ""]
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


def _detail(name: str, r: dict[str, Any]) -> str:
    if name == "linearizable":
        ff = r.get("first_failure")
        return (f"{r.get('keys')} keys; unknown: {r.get('unknown')}" +
                (f"; first failure: {ff['reason']}" if ff else ""))
    if name == "no_lost_writes":
        return f"{r.get('acknowledged')} acknowledged; lost {len(r.get('lost', []))}; {r.get('why', '')}"
    if name == "one_leader_per_term":
        return f"{r.get('terms')} terms; violations {len(r.get('violations', []))}"
    if name == "hash_chains_agree":
        return f"{r.get('shared_indices')} shared indices; divergence {r.get('first_divergence')}"
    if name == "convergence":
        return "; ".join(f"{j}: {v.get('running')}/{v.get('want')} after {v.get('converged_after_s')}s"
                         for j, v in (r.get("jobs") or {}).items()) or str(r.get("why", ""))
    if name.startswith("discovery"):
        return f"{r.get('answers')} answers; {r.get('violation_count')} violations"
    if name == "recovery":
        return (f"max {r.get('max_s')} s from a fault's end until every replica names one leader, "
                f"max {r.get('max_caught_up_s')} s until every replica caught up (before the next fault began): " +
                ", ".join(f"{f['after']} {f['seconds']}/{f.get('caught_up_s')}"
                          + (f" (next fault, {f['interrupted_by']['kind']}, at +{f['interrupted_by']['after_s']} s)"
                             if f.get("interrupted_by") else "") for f in r.get("faults", [])))
    if name == "fencing":
        return (f"{r.get('given_up')} placements given up; {r.get('violation_count')} containers "
                f"still running past the bound")
    if name == "faults_verified":
        return f"{r.get('faults')} faults; unverified {len(r.get('unverified', []))}"
    if name == "no_server_errors":
        return f"{r.get('count')} non-503 5xx answers"
    if name == "no_network_leftovers":
        if r.get("valid") == "unknown":
            return str(r.get("why", ""))
        swept = r.get("swept_during_wait") or {}
        return (f"agents' runtime {r.get('runtime')}; after the faults "
                f"{'checked' if r.get('after_faults_checked') else 'not checked (no runc)'}"
                f"{f' (swept while waiting: {swept})' if swept else ''}; "
                f"{len(r.get('violations', []))} leftovers")
    return json.dumps(r, default=str)[:200]


if __name__ == "__main__":
    import sys

    d = sys.argv[1]
    write(d, json.load(open(os.path.join(d, "results.json"))))
