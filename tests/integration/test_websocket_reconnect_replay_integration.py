"""Reconnect and resume: a reconnecting client gets exactly what it missed, from the hot
buffer (Redis) rather than the log, and a storm of reconnects does not hit the log per client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async

from monitoring.metrics import metrics
from tests.support import factories
from tests.support.faults import lose_hot_buffer
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_a_storm_of_reconnects_is_served_from_the_buffer_not_the_log(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    readers = [await database_sync_to_async(make_user)() for _ in range(30)]
    conv = await factories.conversation(owner, agent="", members=tuple((u, "member") for u in readers))
    writer, _, _ = await Client.connect(owner)
    await writer.recv()
    for i in range(5):
        await writer.command("send", conversation=conv, client_msg_id=f"a{i}", text=f"before {i}")
    # Every reader was at seq 5 when it dropped; 20 more events happen while they are away.
    for i in range(20):
        await writer.command("send", conversation=conv, client_msg_id=f"b{i}", text=f"missed {i}")
    from_log = metrics.counter("replays", source="log")
    from_buffer = metrics.counter("replays", source="buffer")

    async def reconnect(user: Any) -> Client:
        client, _, _ = await Client.connect(user)
        await client.recv()
        reply = await client.command("subscribe", conversation=conv, since_seq=5)
        assert reply["recovered"] is True
        await client.seen_or_until(lambda f: f.get("seq") == 25)
        return client

    clients = await asyncio.gather(*(reconnect(u) for u in readers))
    for client in clients:
        assert [e["seq"] for e in client.events(conv)] == list(range(6, 26))
        assert client.events(conv)[0]["data"]["text"] == "missed 0"
    assert metrics.counter("replays", source="log") == from_log
    assert metrics.counter("replays", source="buffer") - from_buffer >= 1


async def test_replay_falls_back_to_the_log_when_the_buffer_lacks_the_range(make_user: Any, settings: Any) -> None:

    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="")
    writer, _, _ = await Client.connect(owner)
    await writer.recv()
    for i in range(8):
        await writer.command("send", conversation=conv, client_msg_id=str(i), text=f"m{i}")
    # The buffer lost its contents (a Redis restart): the log still answers, completely.
    await lose_hot_buffer(conv)
    from_log = metrics.counter("replays", source="log")
    reader, _, _ = await Client.connect(owner)
    await reader.recv()
    await reader.command("subscribe", conversation=conv, since_seq=2)
    await reader.seen_or_until(lambda f: f.get("seq") == 8)
    assert [e["seq"] for e in reader.events(conv)] == [3, 4, 5, 6, 7, 8]
    assert metrics.counter("replays", source="log") == from_log + 1


async def test_an_event_whose_doorbell_was_lost_still_arrives(make_user: Any, monkeypatch: Any) -> None:
    from channels.layers import get_channel_layer

    from chat.publishing import run_service
    from chat.services.messages import message_send

    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="")
    client, _, _ = await Client.connect(owner)
    await client.recv()
    await client.command("subscribe", conversation=conv)
    # Stored and buffered, but the doorbell is lost on its way (Redis blinked between the buffer
    # append and the publish, without an error), and nothing else happens in the conversation.
    layer = get_channel_layer()
    ring = layer.group_send

    async def lose_doorbells(group: str, message: dict[str, Any]) -> None:
        if message.get("type") != "conv.event":
            await ring(group, message)

    monkeypatch.setattr(layer, "group_send", lose_doorbells)
    await run_service(
        message_send,
        conversation_id=conv,
        author_id=owner.id,
        username=owner.username,
        client_msg_id="quiet",
        text="the last word",
        can_write=True,
    )
    monkeypatch.setattr(layer, "group_send", ring)
    event = await client.seen_or_until(lambda f: f.get("type") == "message", timeout=6)
    assert event["seq"] == 1
    assert event["data"]["text"] == "the last word"
