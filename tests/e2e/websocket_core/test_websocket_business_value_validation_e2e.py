"""The seed's business-value test, on the real stack (server, agent worker, PostgreSQL, Redis): the demo
workspace holds six weeks of generated usage across people, models and tools (`seed_demo`), and the
people of its team room ask the built-in analyst over the real socket "how can we cut our AI spend?".

- carol (enterprise) gets all five critical events and an answer whose figures are the analytics
  endpoint's for the same days (total cost, cost by model) and whose saving is computed from them: the
  runs that called no tool re-priced with the cheaper model, the difference being the saving quoted;
- bob (free) gets his tier's answer: what the enterprise tier would show, and no money figure;
- the time from sending to `agent_started` and to the answer's first words stays under the seed's 2 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chatclient import Backoff, ChatClient

from chat.management.commands.seed_demo import TEAM_TITLE
from tests.support.servers import Stack, login, running_stack
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]

QUESTION = "@assistant how can we cut our AI spend?"
CRITICAL = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
SEED_BOUND_S = 2.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(env_overrides={"AGENT_OFFLINE_TOKEN_DELAY_MS": "5"}) as running:
        yield running


def team_room(stack: Stack, token: str) -> dict[str, Any]:
    listed = httpx.get(f"{stack.base_url}/api/conversations/", headers={"Authorization": f"Bearer {token}"})
    listed.raise_for_status()
    return next(c for c in listed.json() if c["title"] == TEAM_TITLE)


async def ask(stack: Stack, username: str, conversation: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Ask the question as `username` over a real socket: the run's events by type, and how long after
    sending each type first arrived (seconds)."""
    arrived: dict[str, float] = {}
    sent_at = 0.0

    def on_event(frame: dict[str, Any]) -> None:
        arrived.setdefault(f"{frame['data'].get('run_id')}:{frame['type']}", time.monotonic() - sent_at)

    client = ChatClient(stack.ws_url(), token=login(stack, username), backoff=Backoff(base_s=0.2), on_event=on_event)
    await client.start()
    try:
        await client.subscribe(conversation)
        sent_at = time.monotonic()
        reply = await asyncio.wait_for(client.send(conversation, QUESTION), timeout=30)
        assert reply.get("ok"), reply
        run_id = reply["run_id"]

        def ended() -> dict[str, dict[str, Any]] | None:
            mine = {e["type"]: e["data"] for e in client.events(conversation) if e["data"].get("run_id") == run_id}
            return mine if {"agent_completed", "agent_failed"} & set(mine) else None

        events = await eventually(ended, timeout=30, what=f"{username}'s run to end")
    finally:
        await client.close()
    timings = {kind.split(":", 1)[1]: at for kind, at in arrived.items() if kind.startswith(f"{run_id}:")}
    return events, timings


async def test_an_enterprise_owner_gets_a_costed_saving_that_matches_the_analytics(stack: Stack) -> None:
    carol, alice = login(stack, "carol"), login(stack, "alice")
    room = team_room(stack, carol)

    events, timings = await ask(stack, "carol", room["id"])

    assert set(CRITICAL) <= set(events), sorted(events)
    assert timings["agent_started"] < SEED_BOUND_S, timings
    assert timings["agent_delta"] < SEED_BOUND_S, timings
    tool = events["tool_completed"]
    assert tool["tool"] == "spend_recommendations"
    assert tool["ok"] is True
    result = tool["result"]
    best = result["recommendations"][0]
    assert abs(best["saving"] - (best["cost_now"] - best["cost_alternative"])) <= 0.01
    assert best["saving"] > 0
    answer = events["agent_completed"]["text"]
    assert f"would have cost ${best['saving']:,.2f} less" in answer, answer
    assert f"({best['runs']} of {best['completed_runs']})" in answer, answer

    # The same days through the analytics endpoint (the workspace's owner asks): the figures agree.
    query = result["query"]
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {alice}"}) as http:
        report = await http.get(
            f"/api/workspaces/{query['workspace_id']}/analytics/", params={"from": query["from"], "to": query["to"]}
        )
    assert report.status_code == 200, report.text
    totals = report.json()["totals"]
    assert round(float(totals["cost"]), 2) == result["total_cost"]
    for model, figures in result["by_model"].items():
        if figures["cost"]:
            assert totals["by_model"][model]["cost"] == figures["cost"], model
            assert totals["by_model"][model]["runs"] == figures["runs"], model


async def test_a_free_member_gets_his_tiers_answer_and_no_money_figure(stack: Stack) -> None:
    bob = login(stack, "bob")
    room = team_room(stack, bob)

    events, timings = await ask(stack, "bob", room["id"])

    assert "agent_completed" in events, sorted(events)
    assert timings["agent_started"] < SEED_BOUND_S, timings
    answer = events["agent_completed"]["text"]
    assert "not part of your free tier" in answer, answer
    assert "The enterprise tier would show" in answer, answer
    assert "$" not in answer
