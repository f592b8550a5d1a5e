"""search_history's scope "all" (agents/tools_conversation.py) against the real PostgreSQL: its result is an event
every member of the asking conversation reads, so it may only hold text from conversations that EVERY current
active member of that conversation may read; for a private conversation with the agent that is all of the asker's.
An asker whose tier lacks the `search` capability gets this conversation's matches and what enterprise would show.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from agents.tools import ToolContext, default_registry
from chat.models import ConversationMember, Message, Role
from chat.services.accounts import user_deactivate
from chat.services.conversation_admin import conversation_delete
from chat.services.conversations import conversation_member_remove
from tests.support.factories import conversation_sync, message_sync

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


async def search_as(user: Any, conv: str, query: str, scope: str | None = "all") -> dict[str, Any]:
    args = {"query": query, "limit": 20} | ({"scope": scope} if scope else {})
    outcome = await default_registry().call("search_history", args, ToolContext(user_id=user.id, conversation_id=conv))
    assert outcome.ok, outcome.result
    return outcome.result


def world(make_user: Any) -> dict[str, Any]:
    """alice (enterprise) asks in `room` (alice, bob, carol as viewer); zebra messages everywhere."""
    alice, bob, carol, dave = (make_user(tier="enterprise"), make_user(), make_user(), make_user())
    room = conversation_sync(alice, agent="", members=((bob, Role.MEMBER), (carol, Role.VIEWER)), title="room")
    rooms = {
        "all three": conversation_sync(alice, agent="", members=((bob, Role.MEMBER), (carol, Role.VIEWER))),
        "all three and dave": conversation_sync(
            alice, agent="", members=((bob, Role.MEMBER), (carol, Role.MEMBER), (dave, Role.MEMBER))
        ),
        "carol is not in": conversation_sync(alice, agent="", members=((bob, Role.MEMBER),)),
        "alice alone": conversation_sync(alice, agent=""),
        "alice is not in": conversation_sync(bob, agent="", members=((carol, Role.MEMBER),)),
        "deleted": conversation_sync(alice, agent="", members=((bob, Role.MEMBER), (carol, Role.MEMBER))),
    }
    for name, conv in rooms.items():
        message_sync(conv, alice if name != "alice is not in" else bob, f"zebra: {name}")
    message_sync(room, bob, "zebra: the room itself")
    conversation_delete(conversation_id=rooms["deleted"], actor_id=alice.id)
    return {"alice": alice, "bob": bob, "carol": carol, "room": room, "rooms": rooms}


def texts(result: dict[str, Any]) -> set[str]:
    return {m["snippet"].replace("«zebra»", "zebra") for m in result["matches"]}


async def test_a_shared_rooms_search_never_shows_a_conversation_some_member_cannot_read(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    result = await search_as(w["alice"], w["room"], "zebra")
    assert result["scope"] == "all"
    assert texts(result) == {"zebra: the room itself", "zebra: all three", "zebra: all three and dave"}
    body = json.dumps(result)
    for name in ("carol is not in", "alice alone", "alice is not in", "deleted"):
        assert name not in body
        assert w["rooms"][name] not in body  # not even an id

    def readers(conversation_id: str) -> set[int]:
        return set(ConversationMember.objects.filter(conversation_id=conversation_id).values_list("user_id", flat=True))

    # Whatever matched: every member of the room reads its conversation.
    room_members = await database_sync_to_async(readers)(w["room"])
    for match in result["matches"]:
        assert room_members <= await database_sync_to_async(readers)(match["conversation_id"])


async def test_the_rule_follows_the_rooms_current_active_members(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    # carol leaves the room: the conversation she is not in may now be searched from it...
    await database_sync_to_async(conversation_member_remove)(
        conversation_id=w["room"], actor_id=w["carol"].id, user_id=w["carol"].id
    )
    assert "zebra: carol is not in" in texts(await search_as(w["alice"], w["room"], "zebra"))
    # ...and a deactivated member reads nothing, so does not narrow it either; bob's going does.
    await database_sync_to_async(user_deactivate)(user_id=w["bob"].id)
    assert "zebra: alice alone" in texts(await search_as(w["alice"], w["room"], "zebra"))


async def test_a_private_conversation_with_the_agent_searches_all_of_the_askers(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    private = await database_sync_to_async(conversation_sync)(w["alice"], title="me and the agent")
    result = await search_as(w["alice"], private, "zebra")
    assert texts(result) == {
        "zebra: the room itself",
        "zebra: all three",
        "zebra: all three and dave",
        "zebra: carol is not in",
        "zebra: alice alone",
    }
    assert {m["conversation_title"] for m in result["matches"]} >= {"room", "t"}


async def test_this_conversation_stays_the_default_scope(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    result = await search_as(w["alice"], w["room"], "zebra", scope=None)
    assert result["scope"] == "conversation"
    assert texts(result) == {"zebra: the room itself"}
    assert {m["conversation_id"] for m in result["matches"]} == {w["room"]}


async def test_a_tier_without_search_gets_this_conversation_and_what_enterprise_would_show(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    result = await search_as(w["bob"], w["room"], "zebra")  # bob is on the free tier
    assert result["scope"] == "conversation"
    assert result["beyond_tier"] == {
        "capability": "search",
        "tier": "free",
        "available_in": "enterprise",
        "would_show": "the best matches from every conversation that all of this conversation's members can read",
    }
    assert texts(result) == {"zebra: the room itself"}


async def test_a_non_member_gets_nothing_in_any_scope(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    outsider = await database_sync_to_async(make_user)(tier="enterprise")
    for scope in ("all", "conversation"):
        assert (await search_as(outsider, w["room"], "zebra", scope=scope))["matches"] == []


async def test_results_are_ranked_and_earlier_cross_requests_are_not_matches(make_user: Any) -> None:
    w = await database_sync_to_async(world)(make_user)
    await database_sync_to_async(message_sync)(w["room"], w["bob"], "zebra zebra: zebra crossing plans, zebra")
    await database_sync_to_async(message_sync)(w["room"], w["alice"], "@assistant search everywhere for zebra")
    await database_sync_to_async(message_sync)(w["room"], w["alice"], "search all my conversations for zebra?")
    result = await search_as(w["alice"], w["room"], "zebra")
    assert result["matches"][0]["snippet"].startswith("«zebra» «zebra»: «zebra» crossing")
    assert all("search" not in m["snippet"] for m in result["matches"])
    ranks = [m["rank"] for m in result["matches"]]
    assert ranks == sorted(ranks, reverse=True)


async def test_nothing_older_than_the_strictest_members_history_retention(make_user: Any) -> None:
    """bob is on the free tier (30 days of history): a message older than that is not his to read any more, so a
    result every member of the room reads leaves it out; in alice's private conversation it is hers to find."""
    w = await database_sync_to_async(world)(make_user)

    def age(text: str, days: int) -> None:
        Message.objects.filter(text=text).update(created_at=timezone.now() - timedelta(days=days))

    await database_sync_to_async(age)("zebra: all three", 31)
    await database_sync_to_async(age)("zebra: the room itself", 31)
    await database_sync_to_async(age)("zebra: all three and dave", 29)
    assert texts(await search_as(w["alice"], w["room"], "zebra")) == {"zebra: all three and dave"}
    assert texts(await search_as(w["alice"], w["room"], "zebra", scope=None)) == set()
    private = await database_sync_to_async(conversation_sync)(w["alice"], title="mine")
    assert {"zebra: all three", "zebra: the room itself"} <= texts(await search_as(w["alice"], private, "zebra"))
