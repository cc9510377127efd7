"""Replay one simulated schedule: python -m tests.sim --seed 1234 --steps 2000 --nodes 5"""
from __future__ import annotations

import argparse
import logging
import sys

from .cluster import SimConfig, run_seed
from .network import NetFaults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--nodes", type=int, default=3)
    rep = p.add_mutually_exclusive_group()
    rep.add_argument("--repair", dest="repair", action="store_true", default=None,
                     help="RaftNode(repair=True): raftctl's replication overrides (the default)")
    rep.add_argument("--no-repair", dest="repair", action="store_false",
                     help="RaftNode(repair=False): pysyncobj's own replication")
    p.add_argument("--no-net-faults", action="store_true", help="no loss, duplication or reordering")
    p.add_argument("--loss", type=float, default=NetFaults.loss, help="probability a message is lost")
    p.add_argument("--duplicate", type=float, default=NetFaults.duplicate, help="probability of a second copy")
    p.add_argument("--reorder", type=float, default=NetFaults.reorder, help="probability of a long extra delay")
    p.add_argument("--no-dup-votes", action="store_true", help="never duplicate a response_vote message")
    p.add_argument("--compact", type=int, default=0, help="compact the log past this many entries")
    p.add_argument("--torn", action="store_true", help="crashes may keep part of an unsynced tail")
    p.add_argument("--members", action="store_true", help="membership changes: add a replica, remove one")
    p.add_argument("--liveness-only", action="store_true", help="skip the safety checks (liveness only)")
    p.add_argument("-v", "--verbose", action="store_true", help="show pysyncobj's and raftctl's log")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.CRITICAL + 1, stream=sys.stderr)
    cfg = SimConfig(seed=a.seed, steps=a.steps, nodes=a.nodes, repair=a.repair, torn=a.torn, safety=not a.liveness_only, compact=a.compact,
                    members=a.members,
                    net=NetFaults.none() if a.no_net_faults else NetFaults(
                        loss=a.loss, duplicate=a.duplicate, reorder=a.reorder, duplicate_votes=not a.no_dup_votes))
    res = run_seed(cfg)
    print(f"seed {res.seed}: {res.steps} steps, {res.sim_seconds:.1f} s simulated, trace {res.trace[:16]}")
    print(f"  faults {res.faults}")
    print(f"  network {res.net}")
    print(f"  checked {res.counts}")
    if res.violation is not None:
        print(f"VIOLATION {res.violation}")
        return 1
    print("no violation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
