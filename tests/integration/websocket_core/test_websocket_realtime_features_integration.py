"""Ephemeral events (docs/protocol.md §5): typing with a TTL, read markers, presence per user not per tab;
when the agent answers, mentions and agent-run quota (§8); who watches a live run (co-viewing)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from agents.models import AgentRun
from chat.models import ConversationMember, Event
from chat.services.conversations import conversation_member_add
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


# --- when the agent answers, mentions, quota (docs/protocol.md §8) ------------------------------------


async def test_auto_mode_answers_a_lone_human_and_a_group_only_when_mentioned(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)  # an agent, `auto` by default
    a = await joined(alice, conv)
    alone = await a.command("send", conversation=conv, client_msg_id="alone", text="what is 2+2?")
    assert alone["ok"] is True
    assert "run_id" in alone
    await a.until(lambda f: f.get("type") == "agent_completed")
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=alice.id, username=bob.username, role="member"
    )
    plain = await a.command("send", conversation=conv, client_msg_id="hey", text="hey bob, are you there?")
    assert plain["ok"] is True
    assert "run_id" not in plain
    addressed = await a.command("send", conversation=conv, client_msg_id="ask", text="@assistant what is 3+3?")
    assert "run_id" in addressed
    started = await a.until(lambda f: f.get("type") == "agent_started")
    assert started["data"]["trigger_message_id"] == addressed["message"]["id"]
    await a.until(lambda f: f.get("type") == "agent_completed" and f["data"]["run_id"] == addressed["run_id"])
    runs = await database_sync_to_async(lambda: list(AgentRun.objects.filter(conversation_id=conv)))()
    assert len(runs) == 2  # none for "hey bob"
    await a.close()


async def test_a_group_message_that_starts_no_run_spends_no_agent_quota(make_user: Any) -> None:
    """Free tier: 20 agent runs per hour, 30 messages per minute. In a group in `auto` mode the
    humans talk past the agent-run budget; the 21st message is accepted (it used to be refused as
    "too many agent runs" because every message queued a run)."""
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),))
    a = await joined(alice, conv)
    runs_limit = 20  # the free tier's agent_runs per hour (docs/protocol.md §12)
    for i in range(runs_limit + 1):
        reply = await a.command("send", conversation=conv, client_msg_id=f"m{i}", text=f"talking to bob {i}")
        assert reply["ok"] is True, reply
        assert "run_id" not in reply
    assert await database_sync_to_async(AgentRun.objects.filter(conversation_id=conv).count)() == 0
    addressed = await a.command("send", conversation=conv, client_msg_id="ask", text="@assistant summarise please")
    assert addressed["ok"] is True
    assert "run_id" in addressed
    await a.close()


@pytest.mark.parametrize(
    ("mode", "plain_runs", "mentioned_runs"),
    [("always", True, True), ("mention", False, True), ("off", False, False)],
)
async def test_agent_modes_decide_which_messages_start_a_run(
    make_user: Any, mode: str, plain_runs: bool, mentioned_runs: bool
) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent_mode=mode)  # alone: only `auto` cares
    a = await joined(alice, conv)
    plain = await a.command("send", conversation=conv, client_msg_id="plain", text="hello there")
    assert ("run_id" in plain) is plain_runs
    mentioned = await a.command("send", conversation=conv, client_msg_id="ask", text="hi @Assistant!")
    assert ("run_id" in mentioned) is mentioned_runs
    await a.close()


async def test_mentions_resolve_to_members_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    stranger = await database_sync_to_async(make_user)()  # exists, but is no member
    conv = await factories.conversation(alice, members=((bob, "member"), (carol, "viewer")))
    a = await joined(alice, conv)
    text = (
        f"@{bob.username.upper()}, see {stranger.username}@example.com and @{stranger.username}; "
        f"cc @{carol.username}. and @{bob.username} again, @nobody-at-all"
    )
    reply = await a.command("send", conversation=conv, client_msg_id="m", text=text)
    assert "run_id" not in reply
    event = await a.seen_or_until(lambda f: f.get("type") == "message")
    assert event["data"]["mentions"] == [bob.id, carol.id]  # in order, once each; no stranger
    stored = await database_sync_to_async(
        Event.objects.filter(conversation_id=conv, type="message").values_list("data", flat=True).get
    )()
    assert stored["mentions"] == [bob.id, carol.id]
    plain = await a.command("send", conversation=conv, client_msg_id="p", text="no mentions here")
    event = await a.seen_or_until(lambda f: f.get("type") == "message" and f["seq"] == plain["message"]["seq"])
    assert event["data"]["mentions"] == []
    await a.close()


async def test_a_resend_is_answered_from_the_store_with_its_run(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),))
    a = await joined(alice, conv)
    first = await a.command("send", conversation=conv, client_msg_id="k", text="@assistant hi")
    again = await a.command("send", conversation=conv, client_msg_id="k", text="@assistant hi")
    assert again["duplicate"] is True
    assert again["run_id"] == first["run_id"]
    assert again["message"] == first["message"]
    plain = await a.command("send", conversation=conv, client_msg_id="p", text="hi bob")
    plain_again = await a.command("send", conversation=conv, client_msg_id="p", text="hi bob")
    assert plain_again["duplicate"] is True
    assert "run_id" not in plain_again
    assert plain_again["message"] == plain["message"]
    await a.close()


async def test_only_the_owner_changes_the_agent_mode(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    outsider = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),))

    def patch(user: Any, body: Any) -> tuple[int, Any]:
        http = HttpClient()
        http.force_login(user)
        response = http.patch(f"/api/conversations/{conv}/", body, content_type="application/json")
        return response.status_code, response.json()

    status, body = await database_sync_to_async(patch)(bob, {"agent_mode": "always"})
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert (await database_sync_to_async(patch)(outsider, {"agent_mode": "always"}))[0] == 404
    status, body = await database_sync_to_async(patch)(alice, {"agent_mode": "sometimes"})
    assert status == 400
    assert "agent_mode" in body
    assert (await database_sync_to_async(patch)(alice, {}))[0] == 400
    status, body = await database_sync_to_async(patch)(alice, {"agent_mode": "always"})
    assert status == 200
    assert body["agent_mode"] == "always"
    assert body["id"] == conv
    b = await joined(bob, conv)
    reply = await b.command("send", conversation=conv, client_msg_id="m", text="no mention, but always")
    assert "run_id" in reply
    await b.close()


async def test_watchers_of_a_live_run_are_every_subscribed_member(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 300  # a run that lasts a few seconds
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"), (carol, "viewer")))
    a = await joined(alice, conv)
    reply = await a.command("send", conversation=conv, client_msg_id="m", text="@assistant tell me a long story")
    await a.until(lambda f: f.get("type") == "agent_delta")
    client, _, _ = await Client.connect(bob)
    await client.recv()
    sub = await client.command("subscribe", conversation=conv)
    (run,) = sub["active_runs"]
    assert run["run_id"] == reply["run_id"]
    names = [w["username"] for w in run["watchers"]]
    assert names == sorted([alice.username, bob.username])  # carol has no socket: not watching
    c = await joined(carol, conv)  # a viewer watches too, and everyone sees her arrive
    arrived = await a.until(
        lambda f: f.get("type") == "presence" and carol.id in [u["id"] for u in f["data"]["joined"]]
    )
    assert arrived["conversation"] == conv
    listing = await client.command("presence", conversation=conv)
    assert {m["user"]["username"] for m in listing["members"] if m["online"]} == {
        alice.username,
        bob.username,
        carol.username,
    }
    for socket in (a, client, c):
        await socket.close()
