"""`raftctl agent --runtime sim --count N` (the scale test bed's hollow machines): --count always means
"play N machines named ID-0000...", so a process of one simulated machine matches an 'ID-*' agent token too."""
from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import raftctl.agent.fleet as fleet
import raftctl.agent.loop as loop
from raftctl.cli.main import cli


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    async def run_agents(cfg: Any, count: int, spread_s: float | None = None, source: str | None = None) -> None:
        seen.append(("many", (cfg.machine, count)))
        if spread_s is not None:
            seen.append(("spread", spread_s))
        if source is not None:
            seen.append(("source", source))

    async def run_agent(cfg: Any, driver: Any) -> None:
        seen.append(("one", cfg.machine))

    monkeypatch.setattr(fleet, "run_agents", run_agents)
    monkeypatch.setattr(loop, "run_agent", run_agent)
    return seen


def _agent(tmp_path: Any, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["agent", "--id", "v", "--server", "http://127.0.0.1:9", "--token", "t",
                                    "--data-dir", str(tmp_path), "--runtime", "sim", *extra])


@pytest.mark.parametrize("count", [1, 2, 2500])
def test_count_plays_that_many_machines_named_id_dash_n(tmp_path: Any, calls: list, count: int) -> None:
    res = _agent(tmp_path, "--count", str(count))
    assert res.exit_code == 0, res.output
    assert calls == [("many", ("v", count))]


def test_start_spread_is_passed_in_seconds(tmp_path: Any, calls: list) -> None:
    res = _agent(tmp_path, "--count", "500", "--start-spread", "90s")
    assert res.exit_code == 0, res.output
    assert calls == [("many", ("v", 500)), ("spread", 90.0)]
    res = _agent(tmp_path, "--count", "500", "--start-spread", "soon")
    assert res.exit_code != 0 and "--start-spread" in res.output


def test_without_count_one_machine_named_id(tmp_path: Any, calls: list) -> None:
    res = _agent(tmp_path)
    assert res.exit_code == 0, res.output
    assert calls == [("one", "v")]


def test_count_needs_the_sim_runtime(tmp_path: Any, calls: list) -> None:
    res = CliRunner().invoke(cli, ["agent", "--id", "v", "--server", "http://127.0.0.1:9", "--token", "t",
                                   "--data-dir", str(tmp_path), "--runtime", "process", "--allow-unisolated",
                                   "--count", "3"])
    assert res.exit_code == 2 and "--count needs --runtime sim" in res.output
    assert calls == []


@pytest.mark.parametrize("count", ["0", "5001"])
def test_count_bounds(tmp_path: Any, calls: list, count: str) -> None:
    res = _agent(tmp_path, "--count", count)
    assert res.exit_code == 2 and "--count" in res.output
    assert calls == []


def test_source_address_reaches_the_fleet_and_a_bad_one_is_refused_naming_the_flag(tmp_path: Any, calls: list) -> None:
    res = _agent(tmp_path, "--count", "500", "--source-address", "127.0.3.1")
    assert res.exit_code == 0, res.output
    assert calls == [("many", ("v", 500)), ("source", "127.0.3.1")]
    calls.clear()
    res = _agent(tmp_path, "--count", "500", "--source-address", "127.0.3")
    assert res.exit_code == 2 and "--source-address" in res.output and "not an IP address" in res.output
    res = _agent(tmp_path, "--source-address", "127.0.3.1")       # one machine: its client is not the fleet's
    assert res.exit_code == 2 and "--source-address needs --count" in res.output
    assert calls == []
