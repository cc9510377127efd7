"""Hostile CBOR documents shared by the gate's unit tests and the API's integration tests (issue 12, item 1)."""
from __future__ import annotations

import cbor2

SELF_REFERENCE = bytes.fromhex("d81c81d81d00")  # 28([29(0)]): a list that contains itself


def reference_bomb(levels: int = 40) -> bytes:
    """Each level a list holding the previous level twice by shared reference: 2**levels leaves."""
    value: list = [0]
    for _ in range(levels):
        value = [value, value]
    return cbor2.dumps(value, value_sharing=True)
