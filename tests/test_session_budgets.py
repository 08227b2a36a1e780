"""Usage and budgets (issue 15, item 6): usage summed per session and per day, shown by
session.get and /metrics; limits given at create stop a session at a safe point, with an
event naming the limit, and refuse further sends with -32016."""

from __future__ import annotations

import pytest

from cc_daemon.client import BudgetExhausted
from helpers.frontend import Watcher, client_of, path_with_fake_claude, wait_state


def test_cost_is_summed_per_session_and_per_day_and_a_cost_budget_stops_sends(tcp_daemon, tmp_path):
    assert tcp_daemon.get("/metrics", headers={**tcp_daemon.headers(), "Accept": "application/json"}).json()[
        "daily_cost_usd"] is None  # nothing reported yet: null, never an invented zero
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="claude", cwd=str(tmp_path), max_cost_usd=0.03,
                             env={"PATH": path_with_fake_claude()})["session_id"]
    watcher = Watcher(client, session_id, since=0)
    for text in ("one", "two"):
        turn = client.call("session.send", session_id=session_id, text=text)["turn_id"]
        assert watcher.wait("turn_done", turn_id=turn)["data"]["status"] == "completed"
    exhausted = watcher.wait("budget_exhausted")["data"]
    assert exhausted["limit"] == "max_cost_usd" and exhausted["cost_usd"] == pytest.approx(0.03684)
    with pytest.raises(BudgetExhausted) as caught:
        client.call("session.send", session_id=session_id, text="three")
    assert caught.value.data["budget"]["exhausted"] == "max_cost_usd"
    session = client.call("session.get", session_id=session_id)
    assert session["usage"]["cost_usd"] == pytest.approx(0.03684)
    assert session["usage"]["output_tokens"] == 174 and session["budget"]["max_cost_usd"] == 0.03
    metrics = tcp_daemon.get("/metrics", headers={**tcp_daemon.headers(), "Accept": "application/json"}).json()
    assert metrics["daily_cost_usd"] == pytest.approx(0.03684) and metrics["daily_tokens"] == 2 * 25699
    watcher.close()


def test_max_turns_refuses_the_turn_past_it(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path), max_turns=1)["session_id"]
    client.call("session.send", session_id=session_id, text="hello")
    with pytest.raises(BudgetExhausted, match="max_turns"):
        client.call("session.send", session_id=session_id, text="again")


def test_max_wall_s_cancels_the_running_turn_and_names_the_limit(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    session_id = client.call("session.create", runtime="demo", cwd=str(tmp_path), max_wall_s=0.5)["session_id"]
    watcher = Watcher(client, session_id, since=0)
    turn = client.call("session.send", session_id=session_id, text="run ls")["turn_id"]
    done = watcher.wait("turn_done", turn_id=turn)["data"]  # it waited for an answer that never came
    assert done["status"] == "cancelled" and "max_wall_s budget" in done["reason"]
    assert watcher.wait("budget_exhausted")["data"]["limit"] == "max_wall_s"
    wait_state(client, session_id, "idle")
    with pytest.raises(BudgetExhausted):
        client.call("session.send", session_id=session_id, text="hello")
    watcher.close()


def test_the_cli_gives_a_budget_at_creation(tcp_daemon, tmp_path):
    from helpers.daemons import cli

    created = cli("session", "new", "demo", "--cwd", str(tmp_path), "--max-turns", "2", "--max-wall-s", "60",
                  "--data-dir", str(tcp_daemon.data_dir))
    assert created.returncode == 0, created.stderr
    session = client_of(tcp_daemon, "repl").call("session.get", session_id=created.stdout.strip())
    assert session["budget"]["max_turns"] == 2 and session["budget"]["max_wall_s"] == 60
