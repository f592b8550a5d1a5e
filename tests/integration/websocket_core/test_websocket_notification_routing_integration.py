"""User notifications: stored with a per-user gap-free seq, pushed live to every socket of that
user only, and replayed by `sync_notifications`."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.models import Notification, User
from chat.realtime import commands
from chat.services.conversations import conversation_member_add
from monitoring.metrics import metrics
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_being_added_to_a_conversation_notifies_every_socket_of_that_user_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    bob_tabs = [(await Client.connect(bob))[0] for _ in range(2)]
    carol_client, _, _ = await Client.connect(carol)
    for client in [*bob_tabs, carol_client]:
        await client.recv()
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=alice.id, username=bob.username, role="member"
    )
    for tab in bob_tabs:
        note = await tab.seen_or_until(lambda f: f.get("type") == "notification")
        assert note["seq"] == 1
        assert note["data"]["kind"] == "added_to_conversation"
        assert note["data"]["conversation"] == conv
        assert note["data"]["role"] == "member"
    assert (await carol_client.command("ping"))["ok"] is True
    assert not [f for f in carol_client.frames if f.get("type") == "notification"]
    for client in [*bob_tabs, carol_client]:
        await client.close()


async def test_sync_notifications_replays_what_was_missed(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    convs = [await factories.conversation(alice, agent="") for _ in range(3)]
    for conv in convs:
        await database_sync_to_async(conversation_member_add)(
            conversation_id=conv, actor_id=alice.id, username=bob.username, role="viewer"
        )
    client, _, _ = await Client.connect(bob)
    await client.recv()
    from_buffer = metrics.counter("notification_replays", source="buffer")
    reply = await client.command("sync_notifications", since_seq=1)
    assert metrics.counter("notification_replays", source="buffer") == from_buffer + 1  # not the database
    assert reply["head_seq"] == 3
    missed = [await client.recv(), await client.recv()]
    assert [n["seq"] for n in missed] == [2, 3]
    assert [n["data"]["conversation"] for n in missed] == convs[1:]
    assert (await client.command("sync_notifications", since_seq=3))["head_seq"] == 3
    assert (await client.command("ping"))["ok"] is True
    assert [f["seq"] for f in client.frames if f.get("type") == "notification"] == [2, 3]
    await client.close()


def _many_notifications(user: Any, count: int) -> None:
    """`count` stored notifications, written in one statement: none is in the user's hot buffer, so
    a sync reads them from the database, where a page ends."""
    now = timezone.now()
    Notification.objects.bulk_create(
        Notification(user=user, seq=seq, data={"kind": "test", "n": seq}, created_at=now) for seq in range(1, count + 1)
    )
    User.objects.filter(id=user.id).update(notification_seq=count)


async def test_sync_notifications_says_when_a_page_stops_before_the_head(make_user: Any) -> None:
    """More missed than one reply carries: the reply says where its frames stop and that more exist,
    and asking again from there gets the rest, none twice."""
    page = commands.SYNC_NOTIFICATIONS_PAGE
    bob = await database_sync_to_async(make_user)()
    await database_sync_to_async(_many_notifications)(bob, page + 2)
    client, _, _ = await Client.connect(bob)
    await client.recv()
    first = await client.command("sync_notifications", since_seq=0)
    assert (first["head_seq"], first["until_seq"], first["has_more"]) == (page + 2, page, True)
    second = await client.command("sync_notifications", since_seq=first["until_seq"])
    assert (second["head_seq"], second["until_seq"], second["has_more"]) == (page + 2, page + 2, False)
    third = await client.command("sync_notifications", since_seq=page + 2)
    assert (third["until_seq"], third["has_more"]) == (page + 2, False)
    assert (await client.command("ping"))["ok"] is True
    seqs = [f["seq"] for f in client.frames if f.get("type") == "notification"]
    assert seqs == list(range(1, page + 3))
    await client.close()
