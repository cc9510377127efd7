"""Discovery answers from the replicated table (pure, no I/O).

The server calls these for `GET /v1/discovery/{service}` and DNS. The table is
``state.discovery`` (docs/state.md): ``{service: {index, endpoints: {placement_id:
{address, port, placement, machine, version, fault_domain}}}}`` and holds healthy,
published endpoints only, so nothing is filtered here.
"""
from __future__ import annotations

from typing import Any, Mapping

from raftctl.errors import ValidationError
from raftctl.statemachine.records import LEVELS  # widest first


def parse_near(value: str) -> dict[str, str]:
    """`"zone=z1,region=r1"` -> `{"zone": "z1", "region": "r1"}`; ValidationError(field="near") on bad input."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("near must be level=value[,level=value], e.g. zone=z1", field="near")
    out: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            raise ValidationError(f"empty item in {value!r}", field="near")
        level, sep, name = part.partition("=")
        level, name = level.strip(), name.strip()
        if not sep or not name:
            raise ValidationError(f"{part!r} is not level=value (e.g. zone=z1)", field="near")
        if level not in LEVELS:
            raise ValidationError(f"unknown level {level!r}: use region, zone or rack", field="near")
        if level in out:
            raise ValidationError(f"level {level!r} given twice", field="near")
        out[level] = name
    return out


def service_index(discovery_table: Mapping[str, Any], service: str) -> int:
    """The state index of the last command that changed the service's endpoints; 0 if it never existed."""
    entry = discovery_table.get(service)
    return int(entry.get("index", 0)) if entry else 0


def distance(fault_domain: Mapping[str, Any], near: Mapping[str, str] | None) -> tuple[bool, ...]:
    """Sort key: for each level the caller gave, widest first, whether the endpoint is outside it.

    Same rack < same zone < same region < elsewhere (for the levels given).
    """
    if not near:
        return ()
    return tuple(fault_domain.get(level) != near[level] for level in LEVELS if level in near)


def _endpoint(e: Mapping[str, Any], machines: Mapping[str, Any]) -> dict[str, Any]:
    fd = e.get("fault_domain")
    if not fd:  # older entries: fall back to the machine's record (a dict, or a records.Machine)
        m = machines.get(str(e.get("machine")))
        fd = (m.get("fault_domain") if isinstance(m, Mapping) else getattr(m, "fault_domain", None)) or {}
    return {"address": e.get("address"), "port": e.get("port"), "placement": e.get("placement"),
            "machine": e.get("machine"), "version": e.get("version"), "fault_domain": dict(fd)}


def lookup(discovery_table: Mapping[str, Any], machines: Mapping[str, Any], service: str,
           near: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The answer of `GET /v1/discovery/{service}`: `{index, service, endpoints}`.

    Endpoints are copies (callers may not mutate the state through them), ordered
    near-domain first, then by machine, then by placement. An unknown service
    answers index 0 and no endpoints, so watches of a not-yet-deployed one work.
    """
    entry = discovery_table.get(service) or {}
    endpoints = [_endpoint(e, machines) for e in (entry.get("endpoints") or {}).values()]
    endpoints.sort(key=lambda e: (distance(e["fault_domain"], near), str(e["machine"]), str(e["placement"])))
    return {"index": service_index(discovery_table, service), "service": service, "endpoints": endpoints}
