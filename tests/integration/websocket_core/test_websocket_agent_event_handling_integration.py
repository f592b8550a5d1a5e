"""Agent lifecycle over the socket (docs/protocol.md §4): event order, one run at a time per conversation,
cancel (queued and running), disconnect does not cancel, and worker_lost for a dead runner."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from agents.models import AgentRun, RunStatus
from agents.services import run_claim_next
from monitoring.models import RunEventRecord
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


def run_events(client: Client, conv: str, run_id: str) -> list[dict[str, Any]]:
    return [e for e in client.events(conv) if e["data"].get("run_id") == run_id and e["type"] != "message"]


def assert_lifecycle(events: list[dict[str, Any]], terminal: str) -> None:
    types = [e["type"] for e in events]
    assert types[0] == "agent_started"
    assert [t for t in types if t in TERMINAL] == [terminal]
    assert types[-1] == terminal
    for call_id in {e["data"]["call_id"] for e in events if e["type"] == "tool_executing"}:
        started = next(
            i for i, e in enumerate(events) if e["type"] == "tool_executing" and e["data"]["call_id"] == call_id
        )
        done = next(
            i for i, e in enumerate(events) if e["type"] == "tool_completed" and e["data"]["call_id"] == call_id
        )
        assert started < done


async def subscribed(user: Any, conv: str) -> Client:
    client, _, _ = await Client.connect(user)
    await client.recv()
    await client.command("subscribe", conversation=conv, since_seq=0)
    return client


async def test_prompts_sent_during_a_run_are_queued_and_run_one_at_a_time(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 5
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    first = await client.command("send", conversation=conv, client_msg_id="p1", text="what is 2 + 2?")
    second = await client.command("send", conversation=conv, client_msg_id="p2", text="what is 3 * 3?")
    assert first["run_id"] != second["run_id"]
    await client.seen_or_until(
        lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == second["run_id"], timeout=20
    )
    events = client.events(conv)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    first_events = run_events(client, conv, first["run_id"])
    second_events = run_events(client, conv, second["run_id"])
    assert_lifecycle(first_events, "agent_completed")
    assert_lifecycle(second_events, "agent_completed")
    # Strictly sequential: the second run starts after the first ended.
    assert first_events[-1]["seq"] < second_events[0]["seq"]
    assert "4" in first_events[-1]["data"]["text"]
    assert "9" in second_events[-1]["data"]["text"]
    await client.close()


async def test_cancel_stops_a_running_run_promptly_with_partial_text(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 200  # ~30 words: ~6 s if not cancelled
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="p", text="hello there")
    await client.seen_or_until(lambda f: f.get("type") == "agent_delta")
    reply = await client.command("cancel", run_id=sent["run_id"])
    assert reply["ok"] is True
    assert reply["status"] == "cancelling"
    cancelled = await client.seen_or_until(lambda f: f.get("type") in TERMINAL, timeout=2)
    assert cancelled["type"] == "agent_cancelled"
    assert cancelled["data"]["by"]["id"] == user.id
    streamed = "".join(
        e["data"]["text"] for e in run_events(client, conv, sent["run_id"]) if e["type"] == "agent_delta"
    )
    assert cancelled["data"]["partial_text"] == streamed
    run = await database_sync_to_async(AgentRun.objects.get)(id=sent["run_id"])
    assert run.status == RunStatus.CANCELLED
    again = await client.command("cancel", run_id=sent["run_id"])
    assert again["ok"] is False
    assert again["error"]["code"] == "conflict"
    await client.close()


async def test_cancelling_a_queued_run_ends_it_without_running(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # no worker runs here: the run stays queued
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="q", text="what is 1 + 1?")
    reply = await client.command("cancel", run_id=sent["run_id"])
    assert reply["status"] == "cancelled"
    await client.seen_or_until(lambda f: f.get("type") == "agent_cancelled")
    assert [e["type"] for e in run_events(client, conv, sent["run_id"])] == ["agent_started", "agent_cancelled"]
    await client.close()


async def test_disconnect_does_not_cancel_the_run(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 20
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="d", text="what is 6 * 7?")
    await client.seen_or_until(lambda f: f.get("type") == "agent_started")
    await client.close()
    back = await subscribed(user, conv)
    done = await back.seen_or_until(
        lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == sent["run_id"], timeout=15
    )
    assert done["type"] == "agent_completed"
    assert "42" in done["data"]["text"]
    assert_lifecycle(run_events(back, conv, sent["run_id"]), "agent_completed")
    await back.close()


async def test_a_run_whose_worker_died_fails_with_worker_lost(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="w", text="what is 5 + 5?")
    # A worker claims the run, then dies without a heartbeat.
    claimed = await database_sync_to_async(run_claim_next)(worker_id="dead-worker")
    assert claimed is not None
    assert claimed.run_id == sent["run_id"]
    # A live supervisor elsewhere reaps it (threshold shortened from 20 s for the test).
    settings.AGENT_RUNNER = "inprocess"
    settings.AGENT_LOST_AFTER_S = 0.5
    from agents.runner import get_supervisor

    get_supervisor()
    failed = await client.seen_or_until(lambda f: f.get("type") in TERMINAL, timeout=5)
    assert failed["type"] == "agent_failed"
    assert failed["data"]["error"]["code"] == "worker_lost"
    record = await database_sync_to_async(RunEventRecord.objects.get)(run_id=sent["run_id"])
    assert record.terminal_event == "agent_failed"
    assert record.terminal_count == 1
    await client.close()


async def test_monitoring_records_the_five_critical_events_of_a_run(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="m", text="what is 17 * 23?")
    await client.seen_or_until(lambda f: f.get("type") in TERMINAL)
    record = await database_sync_to_async(RunEventRecord.objects.get)(run_id=sent["run_id"])
    assert record.complete
    assert record.missing_critical == []
    assert record.terminal_count == 1
    assert record.agent_started_at <= record.agent_thinking_at <= record.tool_executing_at
    assert record.tool_executing_at <= record.tool_completed_at <= record.agent_completed_at
    assert record.event_count == len(run_events(client, conv, sent["run_id"]))
    await client.close()


async def test_a_joining_client_gets_the_answer_so_far_then_the_rest(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 40
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="j", text="hello there")
    await client.seen_or_until(lambda f: f.get("type") == "agent_delta")
    late, _, _ = await Client.connect(user)
    await late.recv()
    sub = await late.command("subscribe", conversation=conv)
    assert len(sub["active_runs"]) == 1
    active = sub["active_runs"][0]
    assert active["run_id"] == sent["run_id"]
    done = await late.seen_or_until(lambda f: f.get("type") == "agent_completed", timeout=15)
    later_deltas = [e["data"]["text"] for e in late.events(conv) if e["type"] == "agent_delta"]
    assert all(e["seq"] > active["seq"] for e in late.events(conv) if e["type"] == "agent_delta")
    assert active["text"] + "".join(later_deltas) == done["data"]["text"]
    await client.close()
    await late.close()


async def test_one_busy_conversation_does_not_starve_the_others(make_user: Any, settings: Any) -> None:
    from agents.services import run_enqueue

    settings.AGENT_RUNNER = "worker"  # nothing claims automatically; the test claims by hand
    user = await database_sync_to_async(make_user)()
    busy = await factories.conversation(user)
    idle = await factories.conversation(user)
    client = await subscribed(user, busy)
    first = await client.command("send", conversation=busy, client_msg_id="b0", text="what is 1 + 1?")
    for _ in range(60):  # a long queue behind the running one
        await database_sync_to_async(run_enqueue)(
            conversation_id=busy, trigger_message_id=None, requested_by_id=user.id, agent="assistant"
        )
    claimed = await database_sync_to_async(run_claim_next)(worker_id="w1")
    assert claimed is not None
    assert claimed.run_id == first["run_id"]
    other = await client.command("send", conversation=idle, client_msg_id="i0", text="what is 2 + 2?")
    next_claim = await database_sync_to_async(run_claim_next)(worker_id="w1")
    assert next_claim is not None
    assert next_claim.run_id == other["run_id"]
    assert await database_sync_to_async(run_claim_next)(worker_id="w1") is None  # busy is still running
