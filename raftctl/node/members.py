"""Runtime membership changes (3 -> 5 -> 3 replicas) through pysyncobj's dynamic membership."""
from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from pysyncobj import FAIL_REASON

from raftctl.errors import RaftctlError, Unavailable, ValidationError
from raftctl.node.http import REPLICA, body, encode, perm, result_value
from raftctl.statemachine import commands as c

ADDR_RE = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")


CONFLICT_RETRY_S = 3.0   # a change refused because another is in flight (a learner's promotion) is retried this long


async def _change(replica: Any, method: str, addr: str, timeout: float = 10.0) -> None:
    raft = replica.raft
    if raft is None or raft.raft_status()["state"] != "leader":
        leader = replica.status().get("leader_api")
        raise Unavailable(f"membership changes go to the leader ({leader or 'unknown'})", code="not_leader")
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONFLICT_RETRY_S
    while True:
        fut = loop.create_future()

        def done(result: Any, err: Any, fut: asyncio.Future = fut) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_result(err)
            loop.call_soon_threadsafe(settle)
        getattr(raft, method)(addr, callback=done)
        try:
            err = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise Unavailable("the membership change did not commit in time; check `raftctl cluster status`") from None
        if err == FAIL_REASON.SUCCESS:
            return
        # one change at a time (raft/membership.py): another one in flight, such as the leader promoting a
        # learner, finishes within a few commits; a change that can never be made is refused after the retries
        if err != FAIL_REASON.REQUEST_DENIED or loop.time() >= give_up:
            break
        await asyncio.sleep(0.1)
    raise RaftctlError(f"membership change refused by raft (reason {err}): another change is in flight, or "
                       f"{addr} is already a member (or, to remove, is not one)", code="conflict", http_status=409)


@perm("members")
async def add_member(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    data = await body(request)
    raft_addr = data.get("raft") if isinstance(data, dict) else None
    api = data.get("api", "") if isinstance(data, dict) else ""
    node = data.get("id", "") if isinstance(data, dict) else ""
    if not isinstance(raft_addr, str) or not ADDR_RE.match(raft_addr):
        raise ValidationError("raft must be host:port", field="raft")
    if not isinstance(api, str) or not isinstance(node, str):
        raise ValidationError("api and id must be strings", field="api")
    # a learner first: counted in no majority until the leader promotes it, caught up (raft/membership.py)
    await _change(replica, "add_learner", raft_addr)
    res = await replica.propose(c.SetMember(raft=raft_addr, api=api, node=node))
    return encode(request, {"index": res.index, "raft": raft_addr, "added": True, "voter": False}, index=res.index)


@perm("members")
async def remove_member(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    raft_addr = request.match_info["raft"]
    if not ADDR_RE.match(raft_addr):
        raise ValidationError("raft must be host:port", field="raft")
    if raft_addr == replica.cfg.raft:
        raise ValidationError("the leader cannot remove itself; ask another replica after a leader change",
                              field="raft")
    await _change(replica, "removeNodeFromCluster", raft_addr)
    res = await replica.propose(c.RemoveMember(raft=raft_addr))
    if not res.ok and res.error and res.error.code == "not_found":
        return encode(request, {"index": res.index, "raft": raft_addr, "removed": True}, index=res.index)
    result_value(res)
    return encode(request, {"index": res.index, "raft": raft_addr, "removed": True}, index=res.index)
