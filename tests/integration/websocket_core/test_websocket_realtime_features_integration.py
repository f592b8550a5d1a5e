"""Ephemeral events (docs/protocol.md §5): typing with a TTL, read markers, presence per user not per tab."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import ConversationMember, Event
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


async def joined(user: Any, conv: str) -> Client:
    client, _, _ = await Client.connect(user)
    await client.recv()
    await client.command("subscribe", conversation=conv)
    return client


async def test_typing_reaches_other_members_with_ttl_and_is_not_stored(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    a = await joined(alice, conv)
    b = await joined(bob, conv)
    await a.command("typing", conversation=conv, state="start")
    frame = await b.seen_or_until(lambda f: f.get("type") == "typing")
    assert frame["conversation"] == conv
    assert frame["data"]["user"] == {"id": alice.id, "username": alice.username}
    assert frame["data"]["state"] == "start"
    assert frame["data"]["expires_ms"] == 6000
    assert "seq" not in frame
    assert await database_sync_to_async(Event.objects.filter(conversation_id=conv).count)() == 0
    assert not [f for f in a.frames if f.get("type") == "typing"]  # not echoed to the typist's socket
    await a.close()
    await b.close()


async def test_read_marker_is_stored_and_announced(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    a = await joined(alice, conv)
    b = await joined(bob, conv)
    for i in range(3):
        await a.command("send", conversation=conv, client_msg_id=str(i), text=f"m{i}")
    await b.command("read", conversation=conv, seq=2)
    frame = await a.seen_or_until(lambda f: f.get("type") == "read")
    assert frame["data"] == {"user": {"id": bob.id, "username": bob.username}, "seq": 2}
    marker = await database_sync_to_async(
        ConversationMember.objects.filter(conversation_id=conv, user=bob).values_list("last_read_seq", flat=True).get
    )()
    assert marker == 2
    await b.command("read", conversation=conv, seq=999)  # clamped to the head, never past it
    frame = await a.seen_or_until(lambda f: f.get("type") == "read" and f["data"]["seq"] == 3)
    assert frame["data"]["seq"] == 3
    await a.close()
    await b.close()


async def test_presence_is_per_user_not_per_tab(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    bob_public = {"id": bob.id, "username": bob.username}
    a = await joined(alice, conv)
    bob_tab1 = await joined(bob, conv)
    bob_tab2 = await joined(bob, conv)
    joined_frame = await a.seen_or_until(lambda f: f.get("type") == "presence" and bob_public in f["data"]["joined"])
    assert joined_frame["data"]["left"] == []
    # Changes within the batching window arrive together; bob's second tab adds no second "joined".
    assert joined_frame["data"]["joined"].count(bob_public) == 1
    listing = await a.command("presence", conversation=conv)
    online = {m["user"]["username"]: m["online"] for m in listing["members"]}
    assert online == {alice.username: True, bob.username: True}
    await bob_tab1.close()
    still = await a.command("presence", conversation=conv)
    assert {m["user"]["username"]: m["online"] for m in still["members"]}[bob.username] is True
    await bob_tab2.close()
    left = await a.seen_or_until(lambda f: f.get("type") == "presence" and f["data"]["left"])
    assert left["data"] == {"joined": [], "left": [bob_public]}
    # Exactly one joined and one left for bob, although he had two tabs.
    presence = [f for f in a.frames if f.get("type") == "presence"]
    assert sum(f["data"]["joined"].count(bob_public) for f in presence) == 1
    assert sum(f["data"]["left"].count(bob_public) for f in presence) == 1
    after = await a.command("presence", conversation=conv)
    bob_row = next(m for m in after["members"] if m["user"]["id"] == bob.id)
    assert bob_row["online"] is False
    assert bob_row["last_seen"].endswith("Z")
    await a.close()
