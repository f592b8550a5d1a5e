"""Isolation (PROTOCOL §6.3): a user who is not a member gets `not_found` for the conversation on
every command — the same answer as for a conversation that does not exist — and never receives
its events; a viewer may read but not send, type or cancel."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import ConversationMember, Event
from tests.support import factories
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


def conversation_commands(conv: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("subscribe", {"conversation": conv}),
        ("subscribe", {"conversation": conv, "since_seq": 0}),
        ("unsubscribe", {"conversation": conv}),
        ("send", {"conversation": conv, "client_msg_id": "x", "text": "let me in"}),
        ("history", {"conversation": conv}),
        ("typing", {"conversation": conv, "state": "start"}),
        ("read", {"conversation": conv, "seq": 1}),
        ("presence", {"conversation": conv}),
    ]


async def test_non_member_gets_not_found_on_every_command_same_as_nonexistent(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    stranger = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner)
    owner_client, _, _ = await Client.connect(owner)
    await owner_client.recv()
    await owner_client.command("subscribe", conversation=conv, since_seq=0)
    sent = await owner_client.command("send", conversation=conv, client_msg_id="o1", text="what is 2 * 2?")
    await owner_client.seen_or_until(lambda f: f.get("type") == "agent_completed")

    client, _, _ = await Client.connect(stranger)
    await client.recv()
    missing = str(uuid.uuid4())
    for command, fields in conversation_commands(conv):
        hidden = await client.command(command, **fields)
        absent = await client.command(command, **{**fields, "conversation": missing})
        assert hidden["ok"] is False, command
        assert hidden["error"] == absent["error"], command
        assert hidden["error"]["code"] == "not_found", command
    for bogus in ["not-a-uuid", 12, None, {"id": conv}]:
        reply = await client.command("history", conversation=bogus)
        assert reply["error"]["code"] == "not_found"
    hidden_run = await client.command("cancel", run_id=sent["run_id"])
    absent_run = await client.command("cancel", run_id=str(uuid.uuid4()))
    assert hidden_run["error"] == absent_run["error"]
    assert hidden_run["error"]["code"] == "not_found"

    # Nothing the stranger did was stored, and no frame of the conversation reached them.
    events = await database_sync_to_async(list)(
        Event.objects.filter(conversation_id=conv).values_list("type", flat=True)
    )
    assert "message" in events
    assert all(e.get("data", {}).get("text") != "let me in" for e in owner_client.frames)
    assert not [f for f in client.frames if f.get("conversation") == conv and f.get("type") != "reply"]
    assert conv not in str([f for f in client.frames if f.get("type") != "reply"])
    await client.close()
    await owner_client.close()


async def test_events_reach_members_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    eve = await database_sync_to_async(make_user)()
    conv_ab = await factories.conversation(alice, agent="", members=((bob, "member"),))
    conv_e = await factories.conversation(eve, agent="")
    clients = {}
    for name, user, conv in (("alice", alice, conv_ab), ("bob", bob, conv_ab), ("eve", eve, conv_e)):
        client, _, _ = await Client.connect(user)
        await client.recv()
        await client.command("subscribe", conversation=conv, since_seq=0)
        clients[name] = client
    await clients["alice"].command("send", conversation=conv_ab, client_msg_id="1", text="secret for bob")
    await clients["eve"].command("send", conversation=conv_e, client_msg_id="1", text="eve alone")
    await clients["bob"].seen_or_until(lambda f: f.get("type") == "message")
    await clients["eve"].seen_or_until(lambda f: f.get("type") == "message")
    assert [e["data"]["text"] for e in clients["bob"].events(conv_ab)] == ["secret for bob"]
    assert [e["data"]["text"] for e in clients["eve"].events(conv_e)] == ["eve alone"]
    assert "secret for bob" not in str(clients["eve"].frames)
    assert "eve alone" not in str(clients["bob"].frames) + str(clients["alice"].frames)
    for client in clients.values():
        await client.close()


async def test_viewer_reads_but_cannot_send_type_or_cancel(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    viewer = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, members=((viewer, "viewer"),))
    owner_client, _, _ = await Client.connect(owner)
    await owner_client.recv()
    sent = await owner_client.command("send", conversation=conv, client_msg_id="o", text="what is 3 + 4?")

    client, _, _ = await Client.connect(viewer)
    await client.recv()
    sub = await client.command("subscribe", conversation=conv, since_seq=0)
    assert sub["ok"] is True
    refused = await client.command("send", conversation=conv, client_msg_id="v", text="hi")
    assert refused["error"]["code"] == "forbidden"
    typing = await client.command("typing", conversation=conv, state="start")
    assert typing["error"]["code"] == "forbidden"
    cancel = await client.command("cancel", run_id=sent["run_id"])
    assert cancel["error"]["code"] == "forbidden"
    await client.seen_or_until(lambda f: f.get("type") == "agent_completed", timeout=15)
    history = await client.command("history", conversation=conv)
    assert history["events"][0]["data"]["text"] == "what is 3 + 4?"
    stored = await database_sync_to_async(Event.objects.filter(conversation_id=conv, type="message").count)()
    assert stored == 1
    await client.close()
    await owner_client.close()


async def test_membership_removed_means_not_found_from_then_on(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="", members=((member, "member"),))
    client, _, _ = await Client.connect(member)
    await client.recv()
    assert (await client.command("history", conversation=conv))["ok"] is True
    await database_sync_to_async(ConversationMember.objects.filter(conversation_id=conv, user=member).delete)()
    assert (await client.command("history", conversation=conv))["error"]["code"] == "not_found"
    reply = await client.command("send", conversation=conv, client_msg_id="late", text="still here?")
    assert reply["error"]["code"] == "not_found"
    await client.close()


async def test_a_removed_member_stops_receiving_at_once(make_user: Any) -> None:
    from chat.services.conversations import conversation_member_remove

    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="", members=((member, "member"),))
    owner_client, _, _ = await Client.connect(owner)
    await owner_client.recv()
    client, _, _ = await Client.connect(member)
    await client.recv()
    await client.command("subscribe", conversation=conv)
    await owner_client.command("send", conversation=conv, client_msg_id="1", text="still visible")
    await client.seen_or_until(lambda f: f.get("type") == "message")
    await database_sync_to_async(conversation_member_remove)(conversation_id=conv, actor_id=owner.id, user_id=member.id)
    notice = await client.seen_or_until(lambda f: f.get("type") == "error")
    assert notice["error"]["code"] == "not_found"
    await owner_client.command("send", conversation=conv, client_msg_id="2", text="after removal")
    assert (await client.command("ping"))["ok"] is True  # a round trip: anything queued arrived
    assert "after removal" not in str(client.frames)
    # The subscription is already gone, and the conversation is now invisible to this user.
    assert (await client.command("unsubscribe", conversation=conv))["error"]["code"] == "not_found"
