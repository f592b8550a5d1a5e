"""User -> socket -> services -> event log -> agent run -> every member, against PostgreSQL and Redis."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]

AGENT_ORDER = ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]


async def test_calculation_prompt_streams_all_agent_events_in_seq_order(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client, connected, subprotocol = await Client.connect(user)
    assert connected
    assert subprotocol == "chat.v1"
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert welcome["data"]["user"]["username"] == user.username
    assert welcome["data"]["protocol"] == "chat.v1"

    sub = await client.command("subscribe", conversation=conv)
    assert sub["ok"] is True
    assert sub["head_seq"] == 0
    assert sub["active_runs"] == []

    reply = await client.command("send", conversation=conv, client_msg_id="m1", text="what is 17 * 23?")
    assert reply["ok"] is True
    assert reply["duplicate"] is False
    assert reply["message"]["seq"] == 1
    assert reply["run_id"]

    await client.seen_or_until(lambda f: f.get("type") in ("agent_completed", "agent_failed"), timeout=15)
    events = client.events(conv)
    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert types[0] == "message"
    assert events[0]["data"]["text"] == "what is 17 * 23?"
    assert types[1:5] == AGENT_ORDER
    assert types[-1] == "agent_completed"
    assert set(types[5:-1]) <= {"agent_thinking", "agent_delta"}
    assert "agent_delta" in types
    completed = events[-1]["data"]
    assert "391" in completed["text"]
    assert completed["run_id"] == reply["run_id"]
    deltas = "".join(e["data"]["text"] for e in events if e["type"] == "agent_delta")
    assert deltas == completed["text"]
    tool_done = events[4]["data"]
    assert tool_done["ok"] is True
    assert tool_done["result"]["value"] == 391
    await client.close()


async def test_repeated_send_is_idempotent_and_starts_nothing(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="")
    client, _, _ = await Client.connect(user)
    await client.recv()
    await client.command("subscribe", conversation=conv)
    first = await client.command("send", conversation=conv, client_msg_id="same", text="hello")
    second = await client.command("send", conversation=conv, client_msg_id="same", text="hello again")
    assert first["duplicate"] is False
    assert second["duplicate"] is True
    assert second["message"] == first["message"]
    head = await client.command("subscribe", conversation=conv)
    assert head["head_seq"] == 1
    await client.close()


async def test_two_members_see_the_same_events(make_user: Any) -> None:
    from chat.services.conversations import conversation_member_add

    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="")
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=alice.id, username=bob.username, role="member"
    )
    a, _, _ = await Client.connect(alice)
    b, _, _ = await Client.connect(bob)
    await a.recv()
    await b.recv()
    await a.command("subscribe", conversation=conv)
    await b.command("subscribe", conversation=conv)
    for i in range(5):
        await a.command("send", conversation=conv, client_msg_id=f"a{i}", text=f"from alice {i}")
        await b.command("send", conversation=conv, client_msg_id=f"b{i}", text=f"from bob {i}")
    await a.seen_or_until(lambda f: f.get("seq") == 10)
    await b.seen_or_until(lambda f: f.get("seq") == 10)
    assert [e["seq"] for e in a.events(conv)] == list(range(1, 11))
    assert [(e["seq"], e["data"]["text"]) for e in a.events(conv)] == [
        (e["seq"], e["data"]["text"]) for e in b.events(conv)
    ]
    await a.close()
    await b.close()
