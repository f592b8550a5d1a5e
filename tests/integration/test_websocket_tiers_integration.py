"""Tiers over a live consumer: each user gets their tier's limits in `welcome` and is held
to them — text size, subscriptions, rates per command class with no side effect when refused,
connections (4429), history retention — while another user, or another tier, is unaffected."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.models import Event, Message
from tests.support import factories
from tests.support.ws import Client, connected

pytestmark = [pytest.mark.django_db(transaction=True)]


def tier_table(settings: Any, tier: str, **changes: Any) -> None:
    """Override part of one tier's limits for this test (the table is read per connection)."""
    row = {**settings.CHAT_TIERS[tier], **changes}
    if "rates" in changes:
        row["rates"] = {**settings.CHAT_TIERS[tier]["rates"], **changes["rates"]}
    settings.CHAT_TIERS = {**settings.CHAT_TIERS, tier: row}


async def test_welcome_carries_each_users_own_tier_limits(make_user: Any, settings: Any) -> None:
    free = await database_sync_to_async(make_user)(tier="free")
    enterprise = await database_sync_to_async(make_user)(tier="enterprise")
    free_welcome = (await connected(free)).welcome
    ent_welcome = (await connected(enterprise)).welcome
    assert free_welcome["user"]["tier"] == "free"
    assert free_welcome["limits"]["tier"] == "free"
    assert ent_welcome["limits"]["tier"] == "enterprise"
    for name in ("messages", "agent_runs", "typing", "commands"):
        assert free_welcome["limits"]["rates"][name]["limit"] == settings.CHAT_TIERS["free"]["rates"][name][0]
        assert ent_welcome["limits"]["rates"][name]["limit"] == settings.CHAT_TIERS["enterprise"]["rates"][name][0]
    assert free_welcome["limits"]["connections"] < ent_welcome["limits"]["connections"]
    assert free_welcome["limits"]["max_text_chars"] == settings.CHAT_TIERS["free"]["max_text_chars"]
    assert free_welcome["limits"]["history_retention_days"] == 30
    assert ent_welcome["limits"]["history_retention_days"] is None


async def test_text_limit_is_the_tiers(make_user: Any, settings: Any) -> None:
    free = await database_sync_to_async(make_user)(tier="free")
    pro = await database_sync_to_async(make_user)(tier="pro")
    conv = await factories.conversation(free, agent="", members=((pro, "member"),))
    free_client = await connected(free)
    welcome = free_client.welcome
    pro_client = await connected(pro)
    too_long = "x" * (welcome["limits"]["max_text_chars"] + 1)
    refused = await free_client.command("send", conversation=conv, client_msg_id="long", text=too_long)
    assert refused["error"]["code"] == "too_large"
    accepted = await pro_client.command("send", conversation=conv, client_msg_id="long", text=too_long)
    assert accepted["ok"] is True
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv).count)() == 1


async def test_rate_limited_send_has_no_side_effect_and_other_members_see_nothing(
    make_user: Any, settings: Any
) -> None:
    tier_table(settings, "free", rates={"messages": [2, 60]})
    alice = await database_sync_to_async(make_user)(tier="free")
    bob = await database_sync_to_async(make_user)(tier="free")
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    sender = await connected(alice)
    watcher = await connected(bob)
    assert (await watcher.command("subscribe", conversation=conv))["ok"] is True
    for i in range(2):
        assert (await sender.command("send", conversation=conv, client_msg_id=f"m{i}", text=f"hi {i}"))["ok"] is True
    refused = await sender.command("send", conversation=conv, client_msg_id="m2", text="one too many")
    assert refused["ok"] is False
    assert refused["error"]["code"] == "rate_limited"
    assert 0 < refused["error"]["retry_after_ms"] <= 60_000
    assert "messages" in refused["error"]["message"]
    # Nothing stored, no seq used, nothing broadcast; bob is not limited by alice's budget.
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv).count)() == 2
    assert await database_sync_to_async(Event.objects.filter(conversation_id=conv).count)() == 2
    mine = await watcher.command("send", conversation=conv, client_msg_id="b0", text="bob here")
    assert mine["ok"] is True
    assert mine["message"]["seq"] == 3
    await watcher.seen_or_until(lambda f: f.get("type") == "message" and f.get("seq") == 3)
    texts = [f["data"]["text"] for f in watcher.frames if f.get("type") == "message"]
    assert "one too many" not in texts
    # The stored message can still be re-sent (idempotency needs no quota).
    again = await sender.command("send", conversation=conv, client_msg_id="m1", text="hi 1")
    assert again["duplicate"] is True


async def test_typing_spam_does_not_starve_messages_and_never_errors(make_user: Any, settings: Any) -> None:
    tier_table(settings, "free", rates={"typing": [3, 60]})
    alice = await database_sync_to_async(make_user)(tier="free")
    bob = await database_sync_to_async(make_user)(tier="free")
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    watcher = await connected(bob)
    assert (await watcher.command("subscribe", conversation=conv))["ok"] is True
    client = await connected(alice)
    # Typing is best effort: over its limit it is dropped, answered like one that went out, never an
    # error frame, and not hammering either (30 more than the hammer limit keep the socket open).
    replies = [await client.command("typing", conversation=conv, state="start") for _ in range(5)]
    assert [r["ok"] for r in replies] == [True] * 5
    for _ in range(30):
        await client.send_raw(json.dumps({"type": "typing", "conversation": conv, "state": "start"}))
    assert (await client.command("send", conversation=conv, client_msg_id="m", text="still talking"))["ok"] is True
    assert (await client.command("history", conversation=conv))["ok"] is True
    assert not [f for f in client.frames if f.get("type") in ("error", "__close__") or f.get("ok") is False]
    await watcher.until(lambda f: f.get("type") == "message")
    assert len([f for f in watcher.frames if f.get("type") == "typing"]) == 3  # only the admitted ones went out


async def test_connection_limit_closes_the_extra_socket_4429(make_user: Any, settings: Any) -> None:
    tier_table(settings, "free", connections=2)
    alice = await database_sync_to_async(make_user)(tier="free")
    first = await connected(alice)
    second = await connected(alice)
    third, ok, _ = await Client.connect(alice)
    assert ok  # accepted, then closed with the reason: a handshake refusal could only say 403
    assert await third.expect_close(timeout=5) == 4429
    assert (await first.command("ping"))["ok"] is True
    await second.close()
    # The closed socket's slot is released as it disconnects; the next connection fits.
    fourth = await connected(alice)
    assert (await fourth.command("ping"))["ok"] is True


async def test_history_retention_is_the_callers_tier(make_user: Any, settings: Any) -> None:
    free = await database_sync_to_async(make_user)(tier="free")  # 30 days
    enterprise = await database_sync_to_async(make_user)(tier="enterprise")  # forever
    conv = await factories.conversation(enterprise, agent="", members=((free, "member"),))
    writer = await connected(enterprise)
    for i in range(4):
        await writer.command("send", conversation=conv, client_msg_id=f"m{i}", text=f"m{i}")
    old = timezone.now() - timedelta(days=40)
    await database_sync_to_async(Event.objects.filter(conversation_id=conv, seq__lte=2).update)(created_at=old)

    reader = await connected(free)
    free_page = await reader.command("history", conversation=conv)
    assert [e["seq"] for e in free_page["events"]] == [3, 4]
    assert free_page["has_more"] is False
    ent_page = await writer.command("history", conversation=conv)
    assert [e["seq"] for e in ent_page["events"]] == [1, 2, 3, 4]

    from rest_framework.test import APIClient

    api = APIClient()
    await database_sync_to_async(api.force_authenticate)(free)
    response = await database_sync_to_async(api.get)(f"/api/conversations/{conv}/events/")
    assert [e["seq"] for e in response.json()["events"]] == [3, 4]


async def test_an_unknown_tier_on_a_user_row_gets_the_free_limits(make_user: Any) -> None:
    from chat.models import User

    odd = await database_sync_to_async(make_user)()
    # A row whose tier no longer exists in the table (e.g. a retired plan, edited in the database).
    await database_sync_to_async(User.objects.filter(id=odd.id).update)(tier="legacy-gold")
    welcome = (await connected(odd)).welcome
    assert welcome["limits"]["tier"] == "free"
    assert welcome["user"]["tier"] == "legacy-gold"


async def test_frame_limit_is_the_tiers(make_user: Any, settings: Any) -> None:
    tier_table(settings, "free", max_frame_bytes=1024)
    free = await database_sync_to_async(make_user)(tier="free")
    pro = await database_sync_to_async(make_user)(tier="pro")
    conv = await factories.conversation(free, agent="", members=((pro, "member"),))
    free_client = await connected(free)
    welcome = free_client.welcome
    assert welcome["limits"]["max_frame_bytes"] == 1024
    pro_client = await connected(pro)
    big = json.dumps({"type": "send", "conversation": conv, "client_msg_id": "big", "text": "y" * 2000})
    await free_client.send_raw(big)
    refused = await free_client.until(lambda f: f.get("type") == "error")
    assert refused["error"]["code"] == "too_large"
    await pro_client.send_raw(big)
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv, client_msg_id="big").count)() == 0
    assert (await pro_client.command("ping"))["ok"] is True
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv, client_msg_id="big").count)() == 1


async def test_a_send_refused_for_its_content_takes_no_quota(make_user: Any, settings: Any) -> None:
    tier_table(settings, "free", rates={"messages": [2, 60]})
    alice = await database_sync_to_async(make_user)(tier="free")
    conv = await factories.conversation(alice, agent="")
    client = await connected(alice)
    blank = await client.command("send", conversation=conv, client_msg_id="blank", text="   \n\t ")
    assert blank["error"]["code"] == "bad_request"
    for i in range(2):
        assert (await client.command("send", conversation=conv, client_msg_id=f"m{i}", text="hi"))["ok"] is True
