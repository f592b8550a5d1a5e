"""State that follows a user across tabs and devices (docs/protocol.md §10): the read marker moves on
every socket at once and never backwards, a reconnecting device recovers it from `subscribe`, the
conversation list counts what is unread in one query, drafts are saved per conversation and reach
the user's other devices only, and each device's subscriptions are its own."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client as HttpClient
from django.test.utils import CaptureQueriesContext

from chat.models import ConversationMember, Message
from chat.selectors import UNREAD_COUNT_MAX
from tests.support import factories
from tests.support.waiting import consistently
from tests.support.ws import Client, connected

pytestmark = [pytest.mark.django_db(transaction=True)]


async def device(user: Any, *conversations: str) -> Client:
    """One tab or device of `user`, subscribed to `conversations` (live)."""
    client = await connected(user)
    for conv in conversations:
        assert (await client.command("subscribe", conversation=conv))["ok"] is True
    return client


def marker(conv: str, user: Any) -> int:
    return int(
        ConversationMember.objects.filter(conversation_id=conv, user=user).values_list("last_read_seq", flat=True).get()
    )


def frames_of(client: Client, kind: str) -> list[dict[str, Any]]:
    return [f for f in client.frames if f.get("type") == kind]


async def test_a_read_on_one_device_moves_the_marker_on_the_others(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    for i in range(4):
        await factories.message(conv, alice, f"m{i}")
    phone = await device(bob, conv)
    laptop = await device(bob, conv)
    author = await device(alice, conv)
    await phone.command("read", conversation=conv, seq=3)
    on_laptop = await laptop.until(lambda f: f.get("type") == "read")
    assert on_laptop["data"] == {"user": {"id": bob.id, "username": bob.username}, "seq": 3}
    assert on_laptop["conversation"] == conv
    assert (await author.until(lambda f: f.get("type") == "read"))["data"]["seq"] == 3
    assert not frames_of(phone, "read")  # not echoed to the socket that read
    assert await database_sync_to_async(marker)(conv, bob) == 3

    # Backwards (a stale tab reporting what it saw earlier): nothing moves, nobody is told.
    await laptop.command("read", conversation=conv, seq=1)
    await phone.command("read", conversation=conv, seq=3)  # the same seq again: no news either
    await phone.command("read", conversation=conv, seq=4)  # the barrier: a real move after them
    moved = await laptop.until(lambda f: f.get("type") == "read" and f["data"]["seq"] == 4)
    assert moved["data"]["user"]["id"] == bob.id
    await author.until(lambda f: f.get("type") == "read" and f["data"]["seq"] == 4)
    assert [f["data"]["seq"] for f in frames_of(laptop, "read")] == [3, 4]
    assert [f["data"]["seq"] for f in frames_of(author, "read") if f["data"]["user"]["id"] == bob.id] == [3, 4]
    assert await database_sync_to_async(marker)(conv, bob) == 4
    for client in (phone, laptop, author):
        await client.close()


async def test_a_device_that_was_away_recovers_the_marker_on_subscribe(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    sent = [await factories.message(conv, alice, f"m{i}") for i in range(3)]
    laptop = await device(bob)
    first = await laptop.command("subscribe", conversation=conv, since_seq=0)
    assert first["last_read_seq"] == 0
    assert first["head_seq"] == sent[-1].seq
    await laptop.close()  # the laptop goes away...
    phone = await device(bob, conv)
    await phone.command("read", conversation=conv, seq=sent[1].seq)  # ...while the phone reads
    laptop = await device(bob)
    back = await laptop.command("subscribe", conversation=conv, since_seq=sent[-1].seq)
    assert back["recovered"] is True
    assert back["last_read_seq"] == sent[1].seq
    await phone.close()
    await laptop.close()


def list_conversations(user: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """GET /api/conversations/ as `user`: the items, and every query the request ran."""
    http = HttpClient()
    http.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        response = http.get("/api/conversations/")
    assert response.status_code == 200
    return response.json(), [q["sql"] for q in queries.captured_queries]


async def test_the_conversation_list_counts_unread_newest_activity_first_in_one_query(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    await factories.conversation(bob, agent="", title="quiet")  # no message yet
    busy = await factories.conversation(alice, agent="", title="busy", members=((bob, "member"),))
    mine = await factories.conversation(bob, agent="", title="mine", members=((alice, "member"),))
    for i in range(3):
        await factories.message(busy, alice, f"busy {i}")
    await factories.message(busy, bob, "bob's own is never unread")
    await factories.message(mine, bob, "bob wrote this")
    last = await factories.message(mine, alice, "x" * 300)
    reader = await device(bob, busy)
    await reader.command("read", conversation=busy, seq=1)
    await reader.close()

    items, cost = await database_sync_to_async(list_conversations)(bob)
    assert [i["title"] for i in items] == ["mine", "busy", "quiet"]  # newest activity first
    by_title = {i["title"]: i for i in items}
    assert by_title["busy"]["unread"] == 2  # after seq 1: two of alice's and none of bob's own
    assert by_title["busy"]["last_read_seq"] == 1
    assert by_title["mine"]["unread"] == 1
    assert by_title["quiet"]["unread"] == 0
    assert by_title["quiet"]["last_message"] is None
    assert by_title["quiet"]["last_activity_at"].endswith("Z")
    newest = by_title["mine"]["last_message"]
    assert newest["author"] == {"id": alice.id, "username": alice.username, "kind": "user"}
    assert newest["preview"] == "x" * 120
    assert newest["created_at"] <= by_title["mine"]["last_activity_at"]  # the message's time; its event's follows
    assert by_title["busy"]["last_message"]["preview"] == "bob's own is never unread"
    assert by_title["mine"]["head_seq"] == last.seq
    assert {i["agent_mode"] for i in items} == {"auto"}

    # The cost does not grow with the list: ten more conversations, the same number of queries.
    for n in range(10):
        conv = await factories.conversation(alice, agent="", title=f"more {n}", members=((bob, "member"),))
        await factories.message(conv, alice, "hello")
    more, more_cost = await database_sync_to_async(list_conversations)(bob)
    assert len(more) == 13
    assert len(more_cost) == len(cost), more_cost
    # Besides the session and its user, the list is one query.
    assert len([sql for sql in cost if "chat_conversationmember" in sql]) == 1, cost
    assert len(cost) == 3, cost


async def test_agent_answers_count_as_unread_with_the_agents_name(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)  # alone with the assistant: it answers every message
    with_device = await device(alice, conv)
    reply = await with_device.command("send", conversation=conv, client_msg_id="q", text="what is 2+2?")
    done = await with_device.until(lambda f: f.get("type") == "agent_completed")
    await with_device.command("read", conversation=conv, seq=reply["message"]["seq"])
    await with_device.close()
    items, _ = await database_sync_to_async(list_conversations)(alice)
    (item,) = items
    assert item["unread"] == 1  # the answer; alice's question is her own
    assert item["last_message"]["author"] == {"id": None, "username": "assistant", "kind": "agent"}
    assert item["last_message"]["preview"] == done["data"]["text"][:120]


async def test_unread_counts_stop_at_the_cap(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))

    def backlog() -> None:  # rows only: the count reads messages, not events
        Message.objects.bulk_create(
            Message(conversation_id=conv, author=alice, text=f"m{seq}", seq=seq)
            for seq in range(1, UNREAD_COUNT_MAX + 6)
        )

    await database_sync_to_async(backlog)()
    items, _ = await database_sync_to_async(list_conversations)(bob)
    assert items[0]["unread"] == UNREAD_COUNT_MAX  # "1,000 or more" (docs/protocol.md §10)


async def test_drafts_follow_the_user_to_their_other_devices_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    other = await factories.conversation(alice, agent="")
    laptop = await device(alice, conv, other)
    phone = await device(alice, conv)
    elsewhere = await device(alice, other)  # a tab on another conversation
    bobs = await device(bob, conv)
    saved = await laptop.command("draft", conversation=conv, text="half a thought about @bob")
    assert saved["ok"] is True
    assert saved["conversation"] == conv
    synced = await phone.until(lambda f: f.get("type") == "draft")
    assert synced == {
        "type": "draft",
        "conversation": conv,
        "data": {"text": "half a thought about @bob", "updated_at": saved["updated_at"]},
    }
    await bobs.command("typing", conversation=conv, state="start")  # barrier for what alice's draft caused
    await laptop.until(lambda f: f.get("type") == "typing")

    def nobody_else_saw_it() -> bool:
        return not frames_of(laptop, "draft") and not frames_of(elsewhere, "draft") and not frames_of(bobs, "draft")

    await consistently(nobody_else_saw_it, 0.3, "the draft reached only alice's other socket on that conversation")
    assert "half a thought" not in str(bobs.frames)

    # A new device gets it with its subscribe; a cleared draft is not in the reply at all.
    tablet = await device(alice)
    restored = await tablet.command("subscribe", conversation=conv)
    assert restored["draft"] == {"text": "half a thought about @bob", "updated_at": saved["updated_at"]}
    assert "draft" not in await bobs.command("subscribe", conversation=conv)
    await phone.command("draft", conversation=conv, text="")
    cleared = await tablet.until(lambda f: f.get("type") == "draft")
    assert cleared["data"]["text"] == ""
    assert "draft" not in await tablet.command("subscribe", conversation=conv)

    too_long = "x" * (laptop.welcome["limits"]["max_text_chars"] + 1)
    refused = await laptop.command("draft", conversation=conv, text=too_long)
    assert refused["error"]["code"] == "too_large"
    for client in (laptop, phone, elsewhere, bobs, tablet):
        await client.close()


async def test_each_device_keeps_its_own_subscriptions(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    first = await factories.conversation(alice, agent="", members=((bob, "member"),))
    second = await factories.conversation(alice, agent="", members=((bob, "member"),))
    both = await device(bob, first, second)
    one = await device(bob, first)
    sent = await factories.message(second, alice, "only where subscribed")
    await both.until(lambda f: f.get("seq") == sent.seq and f.get("conversation") == second)
    await one.command("unsubscribe", conversation=first)
    again = await factories.message(first, alice, "after one device left")
    await both.until(lambda f: f.get("seq") == again.seq and f.get("conversation") == first)
    await one.command("ping")  # everything the server sent this socket before the ping's reply is in
    assert not [f for f in one.frames if f.get("conversation") == second and "seq" in f]
    assert not [f for f in one.frames if f.get("seq") == again.seq]
    # Bob is still present in `first` through the other device.
    listing = await both.command("presence", conversation=first)
    assert {m["user"]["id"]: m["online"] for m in listing["members"]}[bob.id] is True
    await both.close()
    await one.close()
