"""This tree against a baseline checkout, round after round, each round in fresh processes: the driver shared by
the benches that take ``--baseline DIR`` that way (bench/efficiency.py, bench/api_scale.py). Not a bench itself:
run alone (``make bench`` runs every script here) it does nothing."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

HERE = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def trees(baseline: str | None) -> dict[str, str]:
    """``{"this tree": <this checkout>}``, and ``"baseline": baseline`` when one is given."""
    return {"this tree": HERE} | ({"baseline": os.path.abspath(baseline)} if baseline else {})


def add_options(ap: argparse.ArgumentParser, rounds: int) -> None:
    """The options every bench driven from here takes: ``--rounds`` (``rounds`` by default), ``--baseline DIR`` and
    the hidden ``--inner`` that :func:`run_inner` passes to run one round in the process it starts."""
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--baseline", metavar="DIR", help="also run the raftctl of this checkout, alternated")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)


def run_inner(script: str, tree: str, argv: list[str]) -> dict[str, Any]:
    """``script --inner argv`` in a fresh process on the raftctl of ``tree`` (its PYTHONPATH and working directory:
    the replicas a round starts run that raftctl too); the JSON object of its last line."""
    done = subprocess.run([sys.executable, os.path.abspath(script), "--inner", *argv], cwd=tree,
                          env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternated(named: dict[str, str], rounds: int, run: Callable[[str], dict[str, Any]],
               show: Callable[[int, str, dict[str, Any]], None]) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds of ``run(tree)`` for every tree of ``named``, the order turning each round (``show(round,
    name, figures)`` as each comes); per tree, the median of each figure."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in named}
    for r in range(rounds):
        for name in (list(named) if r % 2 == 0 else list(reversed(named))):
            got = run(named[name])
            runs[name].append(got)
            show(r + 1, name, got)
    return {name: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for name, rows in runs.items()}


if __name__ == "__main__":
    pass
