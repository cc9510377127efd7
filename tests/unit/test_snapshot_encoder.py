"""``GET /v1/snapshot`` encodes the state in a forked child (session 17): at 100,000 placements encoding took 3.5 s
on the leader's event loop under the apply lock. The answer is the backup encoding it here gives, it is made in
another process, a child that fails is a 500 naming no field, and a request that goes away kills its child.
``GET /v1/status?hash=1`` hashes the same encoding the same way (session 26), one child at a time per replica."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from raftctl.clock import FakeClock
from raftctl.errors import RaftctlError
from raftctl.node import snapshot
from raftctl.statemachine import backup
from tests.unit.fake_replica import FakeReplica, machine

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here: the backup is encoded inline")


async def replica_with_machines(n: int) -> FakeReplica:
    r = FakeReplica(FakeClock(wall_ms=1_000_000))
    for i in range(n):
        assert (await r.propose(machine(f"m{i}"))).ok
    return r


async def test_the_answer_is_the_backup_encoded_here() -> None:
    r = await replica_with_machines(20)
    index, digest, body = await snapshot.encoded(r, "n1", 42)
    inline = r.read(lambda s: backup.take(s, "n1", 42))
    assert (index, digest, body) == (inline.index, inline.sha256, inline.encode())
    assert backup.decode(body).summary()["machines"] == 20


async def test_the_state_is_encoded_in_another_process(monkeypatch: Any) -> None:
    real = backup.take

    def take(state: Any, node: str, now: int) -> Any:
        return real(state, f"pid {os.getpid()}", now)

    monkeypatch.setattr(snapshot, "take", take)
    r = await replica_with_machines(3)
    _, _, body = await snapshot.encoded(r, "n1", 1)
    assert backup.decode(body).node not in ("n1", f"pid {os.getpid()}")


def forks_seen(monkeypatch: Any) -> list[int]:
    pids: list[int] = []
    real_fork = snapshot._fork

    def fork(*args: Any) -> int:
        pids.append(real_fork(*args))
        return pids[-1]

    monkeypatch.setattr(snapshot, "_fork", fork)
    return pids


async def test_an_encoder_that_fails_is_an_internal_error_and_leaves_no_child(monkeypatch: Any) -> None:
    def take(state: Any, node: str, now: int) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(snapshot, "take", take)
    pids = forks_seen(monkeypatch)
    r = await replica_with_machines(1)
    with pytest.raises(RaftctlError) as err:
        await snapshot.encoded(r, "n1", 1)
    assert err.value.http_status == 500 and err.value.code == "internal"
    with pytest.raises(ChildProcessError):   # reaped
        os.waitpid(pids[0], os.WNOHANG)


async def test_a_request_that_goes_away_kills_its_encoder(monkeypatch: Any) -> None:
    def slow(state: Any, node: str, now: int) -> Any:
        time.sleep(60)   # in the child only

    monkeypatch.setattr(snapshot, "take", slow)
    pids = forks_seen(monkeypatch)
    r = await replica_with_machines(1)
    task = asyncio.ensure_future(snapshot.encoded(r, "n1", 1))
    while not pids:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ChildProcessError):   # killed and reaped
        os.waitpid(pids[0], os.WNOHANG)


async def test_the_state_hash_is_the_one_computed_here_in_one_child_for_requests_at_once(monkeypatch: Any) -> None:
    pids = forks_seen(monkeypatch)
    r = await replica_with_machines(20)
    answers = await asyncio.gather(*(snapshot.state_digest(r) for _ in range(5)))
    assert answers == [r.read(lambda s: (s.index, s.digest()))] * 5
    assert len(pids) == 1 and r.digest_inflight is None
    assert (await r.propose(machine("m-late"))).ok
    index, digest = await snapshot.state_digest(r)          # a later request: a new child, the newer state
    assert len(pids) == 2 and (index, digest) == r.read(lambda s: (s.index, s.digest()))


async def test_the_state_hash_is_computed_in_another_process(monkeypatch: Any) -> None:
    from raftctl.statemachine.state import State
    monkeypatch.setattr(State, "digest", lambda self: f"pid {os.getpid()}")
    r = await replica_with_machines(1)
    _, digest = await snapshot.state_digest(r)
    assert digest.startswith("pid ") and digest != f"pid {os.getpid()}"
