"""Deterministic simulation of real raftctl Raft nodes (RaftNode) in one process (issue 13).

network.py: pysyncobj Transport over a seeded message scheduler (loss, duplication, reordering,
delay, partitions); clock.py: simulated time and seeded randomness patched into pysyncobj for the
duration of a run; disk.py: SimDisk, a Disk that loses unsynced bytes on a crash; cluster.py: the
nodes, the schedule of faults and client commands; checks.py: the safety invariants checked after
every step. Replay a seed with ``python -m tests.sim --seed N --steps S --nodes K``.
"""
