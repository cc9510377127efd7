"""Image references in job versions resolve to a digest when the version is stored.

A job spec names ``name:tag`` or ``sha256:<hex>``; the state machine stores the manifest
digest the name had at apply time in the version (``spec.image_digest``), so every machine
runs the same bytes, a re-tag does not touch running versions, and a rollback returns to
the old bytes. A name that is not pushed is accepted (the agent fails at pull time).
"""
from __future__ import annotations

import pytest
from msgspec import UNSET
from msgspec.structs import replace

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply, resolve_image
from raftctl.statemachine.records import Image, JobSpec, from_wire
from raftctl.statemachine.state import State
from tests.unit.test_statemachine import fresh

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
SPEC = {"name": "web", "image": "web:1", "command": ["python3", "-m", "http.server"], "replicas": 2,
        "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}}


def versions(s: State, job: str = "web") -> list[tuple[int, str, str | None]]:
    return [(v.version, v.spec.image, v.spec.image_digest) for v in s.jobs[job].versions]


RESOLVE = [
    # (case, images table, image reference, stored digest)
    ("pushed name", {"web:1": D1}, "web:1", D1),
    ("name not pushed", {}, "web:1", None),
    ("other tag pushed only", {"web:2": D2}, "web:1", None),
    ("digest names itself", {}, D2, D2),
    ("digest reference ignores the tags", {"web:1": D1}, D2, D2),
]


@pytest.mark.parametrize("case,images,image,digest", RESOLVE, ids=[r[0] for r in RESOLVE])
def test_resolve_image(case, images, image, digest):
    table = {n: Image(name=n, digest=d, size=1, create_index=1, modify_index=1) for n, d in images.items()}
    spec = from_wire(JobSpec, {**SPEC, "image": image})
    out = resolve_image(table, spec)
    assert out.image_digest == digest
    assert replace(out, image_digest=UNSET) == spec


def test_a_client_cannot_choose_the_digest():
    s = fresh(c.PutImage(name="web:1", digest=D1, size=10),
              c.PutJob(spec={**SPEC, "image_digest": D2}))
    assert versions(s) == [(1, "web:1", D1)]


# -- sequences: (commands, expected versions as (version, image, digest), last result's value subset) --

SEQUENCES = [
    ("stored digest is the one pushed at submit time",
     [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC)],
     [(1, "web:1", D1)], {"version": 1, "image_digest": D1}),
    ("re-tag alone does not change the stored version",
     [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC),
      c.PutImage(name="web:1", digest=D2, size=10)],
     [(1, "web:1", D1)], {"name": "web:1", "digest": D2}),
    ("re-tag then the same spec again is a new version (a deploy)",
     [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC),
      c.PutImage(name="web:1", digest=D2, size=10), c.PutJob(spec=SPEC)],
     [(1, "web:1", D1), (2, "web:1", D2)], {"version": 2, "image_digest": D2}),
    ("same spec, same tag: unchanged",
     [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC), c.PutJob(spec=SPEC)],
     [(1, "web:1", D1)], {"version": 1, "unchanged": True, "image_digest": D1}),
    ("rollback returns to the old bytes even though the tag moved",
     [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC),
      c.PutImage(name="web:1", digest=D2, size=10), c.PutJob(spec=SPEC), c.RollbackJob(name="web", version=1)],
     [(1, "web:1", D1), (2, "web:1", D2), (3, "web:1", D1)], {"version": 3, "rollback_of": 1}),
    ("unpushed name is accepted with no digest",
     [c.PutJob(spec=SPEC)],
     [(1, "web:1", None)], {"version": 1, "image_digest": None}),
    ("pushing the missing image then running again is a new version",
     [c.PutJob(spec=SPEC), c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC)],
     [(1, "web:1", None), (2, "web:1", D1)], {"version": 2, "image_digest": D1}),
    ("a digest reference is stored as itself",
     [c.PutJob(spec={**SPEC, "image": D2})],
     [(1, D2, D2)], {"version": 1, "image_digest": D2}),
]


@pytest.mark.parametrize("case,cmds,expected,value", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_job_versions_keep_the_digest_of_their_submit_time(case, cmds, expected, value):
    s = State()
    r = None
    for cmd in cmds:
        r = apply(s, cmd)
        assert r.ok, r.error
    assert versions(s) == expected
    assert value.items() <= r.value.items()


def test_resolution_is_deterministic_across_replicas():
    cmds = [c.PutImage(name="web:1", digest=D1, size=10), c.PutJob(spec=SPEC),
            c.PutImage(name="web:1", digest=D2, size=10), c.PutJob(spec=SPEC)]
    a, b = fresh(*cmds), fresh(*cmds)
    assert a.snapshot() == b.snapshot()
