"""What the agent must do to make its machine match its assignments (pure).

Level-triggered: every pass looks at the whole picture (the assignment, the containers the
agent supervises, the containers the driver reports, the stops in flight) and answers what to
do now, so a stop that was lost, hung or undone by a late start is started again on the next
pass instead of being remembered as handled.
"""
from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from raftctl.statemachine.records import RELEASED_STATES, JobSpec, RecordError, from_wire

TERMINAL = RELEASED_STATES   # not to run here: lost or stopped


@dataclass(frozen=True)
class StopInFlight:
    """A stop the agent is running for a container: how long this attempt has run, and its bound
    (grace + hook timeout + slack) past which it is presumed hung."""
    age_s: float
    bound_s: float


@dataclass
class Actions:
    start: list[dict[str, Any]] = field(default_factory=list)   # placements to start here
    stop: list[str] = field(default_factory=list)               # containers to stop (no stop in flight)
    retry: list[str] = field(default_factory=list)              # stops past their bound: stop again, harder
    report_stopped: list[str] = field(default_factory=list)     # placements to report as stopped
    held: dict[str, str] = field(default_factory=dict)          # bridge starts held back: the container whose
                                                                # address they were given, still here


def typed(placements: list[dict[str, Any]], specs: Mapping[str, Any] | None = None, *,
          known: dict[str, tuple[Any, JobSpec]] | None = None) -> tuple[list[dict[str, Any]], dict[str, RecordError]]:
    """The agent's one conversion of what it is assigned: each placement with its ``spec`` as the
    :class:`~raftctl.statemachine.records.JobSpec` record (None when the control plane sent none: its job is
    gone). A spec that does not convert leaves ``spec`` None (never started, like a job that is gone) and its
    error, which names the field, under the placement's id.

    ``specs``: the answer's ``{"job@version": spec or None}`` map (``?specs=ref``): each placement names its spec
    by ``spec_ref`` and each spec is converted once, however many placements share it; a placement whose
    ``spec_ref`` is missing or not in the map is refused naming ``spec_ref``. Without it (an answer of a control
    plane of the previous release) each placement carries its ``spec`` inline. ``known``: the conversions of the
    previous answer (key -> (wire form, record)), kept by the caller and updated here to this answer's: a spec
    whose wire form is equal to the one converted then is not converted again."""
    out: list[dict[str, Any]] = []
    refused: dict[str, RecordError] = {}
    converted: dict[str, tuple[Any, JobSpec | RecordError | None]] = {}

    def convert(key: str, wire: Any) -> JobSpec | RecordError | None:
        done = converted.get(key)
        if done is not None:
            return done[1]
        got: JobSpec | RecordError | None = None
        if wire is not None:
            before = known.get(key) if known is not None and specs is not None else None
            if before is not None and before[0] == wire:
                got = before[1]
            else:
                try:
                    got = from_wire(JobSpec, wire)
                except RecordError as exc:
                    got = exc
        converted[key] = (wire, got)
        return got

    for i, p in enumerate(placements):
        if specs is None:
            # inline (a control plane of the previous release): each row's spec converted on its own, as before
            got = convert(f"#{i}", p.get("spec"))
        else:
            ref = p.get("spec_ref")
            if not isinstance(specs, Mapping):
                got = RecordError(f"specs must be a map of job@version to spec, not {type(specs).__name__}",
                                  field="specs")
            elif not isinstance(ref, str) or ref not in specs:
                got = RecordError(f"spec_ref {str(ref)[:80]!r} names no spec of the answer", field="spec_ref")
            else:
                got = convert(ref, specs[ref])
        if isinstance(got, RecordError):
            refused[p["id"]] = got
            got = None
        out.append({**p, "spec": got})
    if known is not None and specs is not None:
        known.clear()
        known.update({k: (w, r) for k, (w, r) in converted.items() if isinstance(r, JobSpec)})
    return out, refused


def wanted(p: dict[str, Any]) -> bool:
    """A placement this machine should be running."""
    return p["desired"] == "run" and p["state"] not in TERMINAL


def _network(spec: Any) -> Any:
    """A placement's ``network`` (its spec a JobSpec record, or its wire form)."""
    return spec.get("network") if isinstance(spec, Mapping) else getattr(spec, "network", None)


def plan(placements: list[dict[str, Any]], local: Set[str], *, existing: Set[str] = frozenset(),
         stopping: Mapping[str, StopInFlight] | None = None) -> Actions:
    """Diff the machine's assigned placements against what runs here.

    ``local``: containers the agent supervises; ``existing``: containers the driver reports
    (whatever the agent believes); ``stopping``: stops in flight. Every container that is local
    or existing but not wanted is stopped, unless a stop for it is in flight and within its bound;
    one past its bound is retried.

    A bridge placement is not started while a container that is not wanted still holds its address (a
    placement declared lost while its machine was down gives its address back, and the control plane may give
    it to a new placement here before this agent, back, has stopped the old container): two namespaces with one
    address on the bridge would answer each other's traffic and health checks. It is started by a later pass,
    once that container is gone (``held`` says which one it waits for).
    """
    stopping = stopping or {}
    out = Actions()
    by_id = {p["id"]: p for p in placements}
    keep = {pid for pid, p in by_id.items() if wanted(p)}
    going = (set(local) | set(existing) | set(stopping)) - keep
    holders = {str(by_id[cid]["address"]): cid for cid in sorted(going)
               if cid in by_id and by_id[cid].get("address")}
    for pid, p in by_id.items():
        if pid in keep and pid not in local and pid not in stopping and p.get("spec") is not None:
            holder = holders.get(str(p.get("address") or ""))
            if holder is not None and _network(p["spec"]) == "bridge":
                out.held[pid] = holder
                continue
            out.start.append(p)
        elif (pid not in keep and pid not in local and pid not in existing and pid not in stopping
              and p["desired"] == "stop" and p["state"] != "stopped"):
            out.report_stopped.append(pid)
    for cid in sorted((set(local) | set(existing) | set(stopping)) - keep):
        inflight = stopping.get(cid)
        if inflight is None:
            out.stop.append(cid)
        elif inflight.age_s > inflight.bound_s:
            out.retry.append(cid)
    return out
