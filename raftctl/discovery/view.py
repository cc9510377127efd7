"""Discovery answers from the replicated table (pure): healthy, published endpoints only."""
from __future__ import annotations

from typing import Any

from raftctl.errors import ValidationError

LEVELS = ("region", "zone", "rack")


def parse_near(value: str) -> dict[str, str]:
    """`zone=z1,region=r1` -> {"zone": "z1", "region": "r1"}."""
    out: dict[str, str] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or k not in LEVELS or not v:
            raise ValidationError(f"{part!r} is not level=value with level region, zone or rack", field="near")
        out[k] = v
    return out


def service_index(table: dict[str, Any], service: str) -> int:
    return table.get(service, {}).get("index", 0)


def lookup(table: dict[str, Any], machines: dict[str, Any], service: str,
           near: dict[str, str] | None = None) -> dict[str, Any]:
    """The answer of GET /v1/discovery/{service}; endpoints in the caller's fault domain first."""
    entry = table.get(service, {"index": 0, "endpoints": {}})
    endpoints = [dict(e, fault_domain=dict(e.get("fault_domain") or {})) for e in entry["endpoints"].values()]

    def distance(e: dict[str, Any]) -> int:
        if not near:
            return 0
        fd = e["fault_domain"]
        return sum(1 for k, v in near.items() if fd.get(k) != v)
    endpoints.sort(key=lambda e: (distance(e), e["machine"], e["placement"]))
    return {"index": entry["index"], "service": service, "endpoints": endpoints}
