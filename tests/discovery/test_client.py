"""The discovery client against in-process fake replicas (tests/discovery/conftest.py)."""
from __future__ import annotations

import asyncio

import pytest

from raftctl.discovery import Client, NoEndpoints, SyncClient
from raftctl.errors import Forbidden, Unauthorized, Unavailable, ValidationError
from tests.discovery.conftest import READONLY_BANNED, TOKEN, Cluster, FakeReplica, closed_port, endpoint


async def test_lookup_answers_like_the_server(replicas, cluster: Cluster) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        ans = await dc.lookup("web")
    assert ans.service == "web" and ans.index == cluster.discovery["web"]["index"]
    assert [e["placement"] for e in ans.endpoints] == ["web-0001", "web-0002"]
    assert ans.endpoints[0] == cluster.discovery["web"]["endpoints"]["web-0001"]
    assert not ans.stale and ans.source == replicas[0].url and 0 <= ans.age_s < 1


async def test_lookup_near_and_consistent_are_passed(replicas) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        ans = await dc.lookup("web", {"zone": "z2"}, consistent=True)
        assert [e["placement"] for e in ans.endpoints] == ["web-0002", "web-0001"]
        assert replicas[0].requests[-1] == {"near": "zone=z2", "consistent": "1"}
        with pytest.raises(ValidationError) as ei:
            await dc.lookup("web", "zone")
        assert ei.value.field == "near"


async def test_unknown_service_is_empty_not_an_error(replicas) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        ans = await dc.lookup("not-yet")
        assert ans.index == 0 and ans.endpoints == []
        with pytest.raises(NoEndpoints):
            await dc.pick("not-yet")


async def test_pick_round_robins_and_prefers_near(replicas, cluster: Cluster) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        picks = [(await dc.pick("web"))["placement"] for _ in range(4)]
        assert picks[0] != picks[1] and picks[:2] == picks[2:]
        assert {p for p in picks} == {"web-0001", "web-0002"}
        await cluster.publish("web", endpoint("web-0003", "m3", "127.0.0.3", 31003, zone="z2"))
        near = {(await dc.pick("web", "zone=z2"))["placement"] for _ in range(4)}
        assert near == {"web-0002", "web-0003"}


async def test_rotates_past_dead_and_failing_replicas(cluster: Cluster) -> None:
    sick, bad, good = FakeReplica(cluster), FakeReplica(cluster), FakeReplica(cluster)
    for r in (sick, bad, good):
        await r.start()
    sick.mode, bad.mode = "no_leader", "garbage"
    try:
        dead = f"http://127.0.0.1:{closed_port()}"
        async with Client([dead, sick.url, bad.url, good.url], TOKEN, timeout=1) as dc:
            ans = await dc.lookup("web")
            assert ans.source == good.url and not ans.stale and len(ans.endpoints) == 2
            n = len(sick.requests)
            await dc.lookup("web")  # sticks to the replica that answered
            assert len(sick.requests) == n and len(good.requests) == 2
    finally:
        for r in (sick, bad, good):
            await r.stop()


async def test_last_known_good_when_every_replica_is_down(replicas) -> None:
    async with Client([r.url for r in replicas], TOKEN, timeout=1) as dc:
        fresh = await dc.lookup("web")
        for r in replicas:
            await r.stop()
        old = await dc.lookup("web")
        assert old.stale and old.endpoints == fresh.endpoints and old.index == fresh.index
        age = old.age_s
        await asyncio.sleep(0.05)
        older = await dc.lookup("web")
        assert older.stale and older.age_s >= age + 0.05 and older.source == fresh.source
        assert (await dc.pick("web"))["placement"] in {"web-0001", "web-0002"}  # pick keeps working
        with pytest.raises(Unavailable):
            await dc.lookup("db")  # never seen: nothing to fall back on


async def test_no_leader_everywhere_also_serves_last_known_good(replicas) -> None:
    async with Client([r.url for r in replicas], TOKEN) as dc:
        fresh = await dc.lookup("web")
        for r in replicas:
            r.mode = "no_leader"
        ans = await dc.lookup("web")
        assert ans.stale and ans.endpoints == fresh.endpoints
        for r in replicas:
            r.mode = "ok"
        assert not (await dc.lookup("web")).stale


async def test_auth_errors_are_raised_not_masked(replicas) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        await dc.lookup("web")
        dc.token = "rct_wrong"
        with pytest.raises(Unauthorized):
            await dc.lookup("web")  # a last-known-good answer exists, and still
    async with Client([replicas[0].url], READONLY_BANNED) as dc:
        with pytest.raises(Forbidden):
            await dc.lookup("web")
    async with Client([replicas[0].url], None) as dc:
        with pytest.raises(Unauthorized):
            await anext(aiter(dc.watch("web")))


async def test_watch_wakes_fast_and_only_for_its_service(replicas, cluster: Cluster) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        it = aiter(dc.watch("web"))
        first = await anext(it)
        assert len(first.endpoints) == 2
        nxt = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.1)  # the blocking query is parked on the replica
        assert replicas[0].requests[-1]["index"] == str(first.index)
        await cluster.publish("db", endpoint("db-0002", "m4", "127.0.0.4", 5432))
        await cluster.unrelated_change()
        await asyncio.sleep(0.3)
        assert not nxt.done(), "woke on another service's change"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        index = await cluster.unpublish("web", "web-0001")
        second = await asyncio.wait_for(nxt, 2)
        assert loop.time() - t0 < 0.1
        assert second.index == index and [e["placement"] for e in second.endpoints] == ["web-0002"]
        await it.aclose()


async def test_watch_ignores_elapsed_waits(replicas, cluster: Cluster) -> None:
    async with Client([replicas[0].url], TOKEN) as dc:
        it = aiter(dc.watch("web", wait_s=0.05))
        first = await anext(it)
        nxt = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.3)
        assert not nxt.done() and len(replicas[0].requests) >= 4  # several waits elapsed, nothing yielded
        await cluster.publish("web", endpoint("web-0009", "m9", "127.0.0.9", 31009))
        assert (await asyncio.wait_for(nxt, 2)).index > first.index
        await it.aclose()


async def test_watch_backs_off_and_resumes_when_a_replica_returns(cluster: Cluster) -> None:
    r = FakeReplica(cluster)
    await r.start()
    async with Client([r.url], TOKEN, timeout=1) as dc:
        it = aiter(dc.watch("web", max_backoff_s=0.2))
        first = await anext(it)
        nxt = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        await r.stop()  # the whole control plane goes away
        await cluster.unpublish("web", "web-0002")
        await asyncio.sleep(0.5)  # the watch retries, backing off
        assert not nxt.done()
        await r.start()  # same port
        try:
            second = await asyncio.wait_for(nxt, 3)
            assert second.index > first.index and [e["placement"] for e in second.endpoints] == ["web-0001"]
            assert not second.stale
            await r.stop()  # lookups fall back on what the watch learned
            assert (await dc.lookup("web")).endpoints == second.endpoints
        finally:
            await it.aclose()
            await r.stop()


async def test_sync_client(replicas, cluster: Cluster) -> None:
    sc = SyncClient([f"127.0.0.1:{closed_port()}", replicas[1].url.removeprefix("http://")], TOKEN, timeout=1)
    try:
        ans = await asyncio.to_thread(sc.lookup, "web")
        assert ans.source == replicas[1].url and len(ans.endpoints) == 2
        picks = {(await asyncio.to_thread(sc.pick, "web"))["placement"] for _ in range(2)}
        assert picks == {"web-0001", "web-0002"}
        watch = sc.watch("web")
        first = await asyncio.to_thread(next, watch)
        nxt = asyncio.ensure_future(asyncio.to_thread(next, watch))
        await asyncio.sleep(0.1)
        await cluster.unpublish("web", "web-0002")
        second = await asyncio.wait_for(nxt, 2)
        assert second.index > first.index and len(second.endpoints) == 1
        await asyncio.to_thread(watch.close)
        for r in replicas:
            await r.stop()
        stale = await asyncio.to_thread(sc.lookup, "web")
        assert stale.stale and stale.endpoints == second.endpoints
    finally:
        await asyncio.to_thread(sc.close)
