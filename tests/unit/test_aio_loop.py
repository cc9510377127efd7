"""Which event loop a control replica and an agent run (raftctl/aio.py): uvloop by default, asyncio's when a
benchmark asks (RAFTCTL_EVENT_LOOP=asyncio). That a served replica runs on uvloop is tests/integration/
test_metrics.py's (``raftctl_event_loop_info``), that a served agent does is test_agent_metrics.py's
(``raftctl_agent_event_loop_info``)."""
from __future__ import annotations

import asyncio

import pytest

from raftctl.aio import event_loop_from_env, loop_name, run


@pytest.mark.parametrize("env,want", [
    ({}, "uvloop"),
    ({"RAFTCTL_EVENT_LOOP": ""}, "uvloop"),
    ({"RAFTCTL_EVENT_LOOP": "uvloop"}, "uvloop"),
    ({"RAFTCTL_EVENT_LOOP": "asyncio"}, "asyncio"),
])
def test_the_loop_named_by_the_environment(env: dict[str, str], want: str) -> None:
    assert event_loop_from_env(env) == want


@pytest.mark.parametrize("raw", ["tokio", "UVLOOP", "asyncio ", "trio"])
def test_an_unknown_loop_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="RAFTCTL_EVENT_LOOP"):
        event_loop_from_env({"RAFTCTL_EVENT_LOOP": raw})


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_run_starts_the_loop_asked_for(name: str) -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        return loop_name(asyncio.get_running_loop())
    assert run(main(), name) == name
