"""One machine's assignment answer (GET /v1/agent/assignments/{machine}) in its two forms, in one run (issue 15).

A state holding one job version (the scale bed's spec: ``{"name", "image": "scale:1", "command", "replicas"}``,
its defaults filled in by validation; ``--env N`` adds N variables of ~100 bytes) and ``--placements`` placements of it on one machine. Per form, inline (each
placement with its spec: the previous release, and the answer without ``?specs=ref``) and ref (each version's spec
once in ``specs``, a ``spec_ref`` per placement):

- bytes: the JSON answer's size;
- leader µs: what the route does per answer, building it (``agent_api._assignments``) and JSON-encoding it as
  ``http.encode`` does;
- agent µs: decoding it, through the gate (a real agent, control.ANSWER_LIMITS) and with msgspec (the simulated
  fleet's ``trusted_json``), then ``converge.typed`` (each spec to its JobSpec record), as ``Agent.converge`` does
  on a changed answer (a fresh ``known`` each time: no conversion is reused).

The forms are measured in alternated rounds (``--rounds``), the median of each round's mean kept, so the noise of
a shared machine falls on both. Prints one JSON line.

    .venv/bin/python bench/assignment_answer.py [--placements 10] [--env 0] [--rounds 7] [--n 300]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftctl import gate  # noqa: E402
from raftctl.agent import converge  # noqa: E402
from raftctl.agent.control import ANSWER_LIMITS  # noqa: E402
from raftctl.agent.fleet import trusted_json  # noqa: E402
from raftctl.node.agent_api import _assignments  # noqa: E402
from raftctl.statemachine import commands as c  # noqa: E402
from raftctl.statemachine.apply import apply  # noqa: E402
from raftctl.statemachine.state import State  # noqa: E402
from raftctl.statemachine.spec import validate_spec  # noqa: E402

SPEC = {"name": "s0", "image": "scale:1", "command": ["serve"], "replicas": 10}


def state_with(placements: int, env: int = 0) -> State:
    s = State()
    spec = validate_spec({**SPEC, "replicas": placements, **({"env": {f"VAR_{i:03d}": "v" * 90 for i in range(env)}}
                                                              if env else {})})
    cmds: list[c.Command] = [
        c.ClaimEpoch(term=1),
        c.RegisterMachine(machine="m1", address="127.0.0.2", fault_domain={}, labels={}, runtime="sim",
                          resources={"cpu": 100_000, "memory": 1 << 40, "pids": 1 << 20}, ports=[31000, 31999]),
        c.PutJob(spec=spec),
        c.Plan(epoch=1, place=[{"job": "s0", "version": 1, "replica": i, "machine": "m1",
                                "resources": spec["resources"], "ports": {}} for i in range(placements)])]
    for cmd in cmds:
        res = apply(s, cmd)
        assert res.ok, res.error
    assert len(s.machine_placements("m1")) == placements
    return s


def mean_us(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--placements", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--env", type=int, default=0,
                    help="environment variables of ~100 bytes added to the spec (a larger spec than the bed's)")
    ap.add_argument("--n", type=int, default=300, help="answers per measurement")
    args = ap.parse_args()
    s = state_with(args.placements, args.env)
    forms = {"inline": "inline", "ref": "ref"}
    payload = {f: json.dumps(_assignments(s, "m1", form), separators=(",", ":")).encode() for f, form in forms.items()}
    series: dict[str, dict[str, list[float]]] = {f: {"leader": [], "gate": [], "msgspec": [], "convert": []}
                                                 for f in forms}
    for r in range(args.rounds):
        order = list(forms) if r % 2 == 0 else list(reversed(forms))
        for f in order:
            form, raw = forms[f], payload[f]
            decoded = trusted_json(raw)
            m = series[f]
            m["leader"].append(mean_us(
                lambda: json.dumps(_assignments(s, "m1", form), separators=(",", ":")), args.n))
            m["gate"].append(mean_us(lambda: gate.decode_json(raw, limits=ANSWER_LIMITS, root="answer"), args.n))
            m["msgspec"].append(mean_us(lambda: trusted_json(raw), args.n))
            m["convert"].append(mean_us(
                lambda: converge.typed(decoded["placements"], decoded.get("specs"), known={}), args.n))
    out: dict[str, Any] = {"bench": "assignment_answer", "placements": args.placements, "env": args.env,
                           "rounds": args.rounds, "n": args.n}
    for f in forms:
        out[f] = {"bytes": len(payload[f]), **{k: round(statistics.median(v), 1) for k, v in series[f].items()}}
    out["ratio"] = {k: round(out["inline"][k] / out["ref"][k], 1)
                    for k in ("bytes", "leader", "gate", "msgspec", "convert")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
