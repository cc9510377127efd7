"""Replicas agree on what they applied: each replica's applied-command hash chain
(the hash after applying entry i, for the indices it was sampled at) must agree with
every other replica's at every index they share, and one replica's hash for an index
must never change (that would be an applied entry rolled back)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class ChainsResult:
    valid: bool
    shared_indices: int = 0
    first_divergence: dict[str, Any] | None = None
    rewrites: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "shared_indices": self.shared_indices,
                "first_divergence": self.first_divergence, "rewrites": self.rewrites[:10]}


def check(chains: dict[str, Iterable[tuple[int, str]]]) -> ChainsResult:
    """`chains`: node -> [(index, hash), ...]."""
    res = ChainsResult(valid=True)
    at: dict[int, dict[str, str]] = {}
    for node, pairs in chains.items():
        mine: dict[int, str] = {}
        for index, digest in pairs:
            index = int(index)
            if index in mine and mine[index] != digest:
                res.valid = False
                res.rewrites.append({"node": node, "index": index, "was": mine[index], "now": digest})
            mine.setdefault(index, digest)
        for index, digest in mine.items():
            at.setdefault(index, {})[node] = digest
    for index in sorted(at):
        hashes = at[index]
        if len(hashes) < 2:
            continue
        res.shared_indices += 1
        if len(set(hashes.values())) > 1 and res.first_divergence is None:
            res.valid = False
            res.first_divergence = {"index": index, "hashes": dict(sorted(hashes.items()))}
    return res
