"""The event log: gap-free seq under concurrent writers, replay by since_seq with no gap and no
duplicate, the replay limit, and history paging (docs/protocol.md §3, §4)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from chat.models import Event
from chat.services.messages import message_send
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


def send_many(conv: str, user: Any, prefix: str, count: int) -> None:
    try:
        for i in range(count):
            message_send(
                conversation_id=conv,
                author_id=user.id,
                username=user.username,
                client_msg_id=f"{prefix}{i}",
                text=f"{prefix} {i}",
                can_write=True,
            )
    finally:
        connection.close()


def test_concurrent_writers_get_gap_free_unique_seqs(make_user: Any) -> None:
    user = make_user()
    from chat.services.conversations import conversation_create

    conv = str(conversation_create(creator=user, title="t", agent="").conversation.id)
    threads = [threading.Thread(target=send_many, args=(conv, user, f"w{t}-", 25)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    seqs = list(Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 151))
    # Each writer's own messages keep their order in the log.
    for t in range(6):
        texts = list(
            Event.objects.filter(conversation_id=conv, data__text__startswith=f"w{t}- ")
            .order_by("seq")
            .values_list("data__text", flat=True)
        )
        assert texts == [f"w{t}- {i}" for i in range(25)]


async def send_texts(client: Client, conv: str, prefix: str, count: int) -> None:
    for i in range(count):
        reply = await client.command("send", conversation=conv, client_msg_id=f"{prefix}{i}", text=f"{prefix}{i}")
        assert reply["ok"] is True


async def test_resubscribe_with_since_seq_replays_exactly_the_missed_events(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="")
    writer, _, _ = await Client.connect(alice)
    await writer.recv()
    await send_texts(writer, conv, "before", 5)

    reader, _, _ = await Client.connect(alice)
    await reader.recv()
    sub = await reader.command("subscribe", conversation=conv, since_seq=2)
    assert sub["ok"] is True
    assert sub["head_seq"] == 5
    assert sub["recovered"] is True
    await send_texts(writer, conv, "after", 3)
    await reader.seen_or_until(lambda f: f.get("seq") == 8)
    seqs = [e["seq"] for e in reader.events(conv)]
    assert seqs == [3, 4, 5, 6, 7, 8]
    # The reply came before the replay.
    reply_index = next(i for i, f in enumerate(reader.frames) if f.get("id") == sub["id"])
    first_event = next(i for i, f in enumerate(reader.frames) if f.get("seq") == 3)
    assert reply_index < first_event
    await writer.close()
    await reader.close()


async def test_subscribe_without_since_seq_starts_live_at_head(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="")
    client, _, _ = await Client.connect(alice)
    await client.recv()
    await send_texts(client, conv, "old", 3)
    sub = await client.command("subscribe", conversation=conv)
    assert sub["head_seq"] == 3
    assert "recovered" not in sub
    await send_texts(client, conv, "new", 2)
    await client.seen_or_until(lambda f: f.get("seq") == 5)
    assert [e["seq"] for e in client.events(conv)] == [4, 5]
    await client.close()


async def test_replay_beyond_the_limit_answers_recovered_false(make_user: Any, settings: Any) -> None:
    settings.CHAT_TIERS = {**settings.CHAT_TIERS, "free": {**settings.CHAT_TIERS["free"], "replay_limit": 3}}
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="")
    client, _, _ = await Client.connect(alice)
    await client.recv()
    await send_texts(client, conv, "m", 6)
    sub = await client.command("subscribe", conversation=conv, since_seq=1)
    assert sub["recovered"] is False
    assert sub["head_seq"] == 6
    await send_texts(client, conv, "live", 1)
    await client.seen_or_until(lambda f: f.get("seq") == 7)
    assert [e["seq"] for e in client.events(conv)] == [7]
    page = await client.command("history", conversation=conv, before_seq=7, limit=4)
    assert [e["seq"] for e in page["events"]] == [3, 4, 5, 6]
    assert page["has_more"] is True
    rest = await client.command("history", conversation=conv, before_seq=3, limit=4)
    assert [e["seq"] for e in rest["events"]] == [1, 2]
    assert rest["has_more"] is False
    await client.close()


async def test_live_stream_has_no_gap_or_duplicate_under_concurrent_senders(make_user: Any) -> None:
    users = [await database_sync_to_async(make_user)() for _ in range(3)]
    conv = await factories.conversation(users[0], agent="", members=tuple((u, "member") for u in users[1:]))
    clients = []
    for user in users:
        client, _, _ = await Client.connect(user)
        await client.recv()
        await client.command("subscribe", conversation=conv, since_seq=0)
        clients.append(client)
    await asyncio.gather(*(send_texts(c, conv, f"u{i}-", 15) for i, c in enumerate(clients)))
    for client in clients:
        await client.seen_or_until(lambda f: f.get("seq") == 45)
        assert [e["seq"] for e in client.events(conv)] == list(range(1, 46))
    transcripts = [[(e["seq"], e["data"]["text"]) for e in c.events(conv)] for c in clients]
    assert transcripts[0] == transcripts[1] == transcripts[2]
    for client in clients:
        await client.close()


async def test_a_repeated_subscribe_does_not_resend_what_was_delivered(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="")
    client, _, _ = await Client.connect(alice)
    await client.recv()
    await client.command("subscribe", conversation=conv, since_seq=0)
    await send_texts(client, conv, "m", 3)
    await client.seen_or_until(lambda f: f.get("seq") == 3)
    again = await client.command("subscribe", conversation=conv)
    assert again["head_seq"] == 3
    await send_texts(client, conv, "n", 1)
    await client.seen_or_until(lambda f: f.get("seq") == 4)
    assert [e["seq"] for e in client.events(conv)] == [1, 2, 3, 4]
