"""The tools that answer about the asking user's world: the time (in their zone) and this
conversation's history. Registered by agents/tools.py; their limits are in its docstring.

Both speak the asking user's time zone (User.time_zone, which the page reports; blank or unknown
means UTC): an answer says times the way the person who asked reads a clock. Their results stay
machine-readable (ISO times and the zone's IANA name): they become tool_completed events, and the
backend words the answer from them.
"""

from __future__ import annotations

import asyncio
import functools
import re
import unicodedata
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents.sandbox import ToolError
from agents.tool_context import ToolContext
from chat.errors import NotFound, ServiceError
from chat.search import conversations_every_member_reads, room_history_since, search_within
from chat.selectors import conversation_for_member, user_tier, user_time_zone
from chat.tiers import all_tiers, limits_for

MAX_QUERY_CHARS = 200
MAX_SEARCH_RESULTS = 20  # chat/search.py allows more; an answer lists these
MAX_TIMEZONE_CHARS = 64
DEFAULT_ZONE = "UTC"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- zones ----------------------------------------------------------------------------------------
@functools.cache
def _known_timezones() -> dict[str, str]:
    """Every IANA name the tz database lists, by its lower-case spelling (people type
    "asia/tokyo"): reads the database, ~70 ms, once, never on the event loop."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def zone_named(name: str) -> zoneinfo.ZoneInfo:
    # Only names the tz database lists: never a path (ZoneInfo("../..") would look one up).
    canonical = _known_timezones().get(name.lower())
    if canonical is None:
        raise ToolError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/Paris'")
    return zoneinfo.ZoneInfo(canonical)


def _requester_zone(user_id: int | None) -> zoneinfo.ZoneInfo:
    """The asking user's zone; UTC for none set, no user, or a name the tz database no longer has."""
    name = user_time_zone(user_id=user_id) if user_id is not None else ""
    try:
        return zone_named(name or DEFAULT_ZONE)
    except ToolError:
        return zoneinfo.ZoneInfo(DEFAULT_ZONE)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# --- current_time ---------------------------------------------------------------------------------
async def current_time(ctx: ToolContext, args: dict[str, Any], *, clock: Clock = utc_now) -> dict[str, Any]:
    """The time in UTC and in the zone asked for, else the asking user's own zone."""
    now = clock().astimezone(UTC)
    name = args.get("timezone")
    if name is not None:
        zone = await asyncio.to_thread(zone_named, name)  # file reads, off the loop
        source = "asked"
    else:
        # Its own thread, not the one thread every run's event writes share.
        zone = await database_sync_to_async(_requester_zone, thread_sensitive=False)(ctx.user_id)
        source = "user"
    local = now.astimezone(zone)
    return {
        "utc": _iso(now),
        "weekday": now.strftime("%A"),
        "timezone": zone.key,
        # Whose zone it is: the one the question named, or the asking user's own.
        "timezone_source": source,
        "local": local.isoformat(timespec="seconds"),
        "local_weekday": local.strftime("%A"),
    }


# --- search_history -------------------------------------------------------------------------------
# A message that only asks for this very search ("@assistant search for invoices?", "search everywhere for
# invoices") is the question, not an answer to it. The verbs and scope words are the offline agent's
# (agents/backends/offline.py SEARCH, offline_rules.py SEARCH_EVERYWHERE); the pattern is PostgreSQL's (ARE), matched
# case-insensitively against whole message texts.
_REQUEST_VERBS = r"(search|find|look\s*up|mention(ed)?|said about)"
_REQUEST_FOR = r"(\s+(for|about|the history for))?"
_SCOPE = r"(\s+(everywhere|((in|across)\s+)?(all\s+)?(of\s+)?(my\s+)?(conversations|chats)))?"
_QUOTE = "[\"'“”‘’]?"
SCOPES = ("conversation", "all")
# Cross-conversation search is this analyst capability (chat/tiers.py ANALYST_CAPABILITIES).
SEARCH_CAPABILITY = "search"
CROSS_WOULD_SHOW = "the best matches from every conversation that all of this conversation's members can read"


def request_pattern(query: str) -> str:
    """The regular expression of a message asking to search for `query`."""
    words = r"\s+".join(re.escape(word) for word in query.split())
    return rf"^.*\m{_REQUEST_VERBS}{_SCOPE}{_REQUEST_FOR}\s+{_QUOTE}{words}{_QUOTE}{_SCOPE}[^[:alnum:]]*$"


def _beyond_tier(user_id: int) -> dict[str, Any] | None:
    """None when the asker's tier has cross-conversation search, else what the answer says instead."""
    tier = user_tier(user_id=user_id)
    if SEARCH_CAPABILITY in limits_for(tier).analyst:
        return None
    higher = next((name for name, t in all_tiers().items() if SEARCH_CAPABILITY in t.analyst), None)
    return {"capability": SEARCH_CAPABILITY, "tier": tier, "available_in": higher, "would_show": CROSS_WOULD_SHOW}


def _search(*, ctx: ToolContext, query: str, limit: int, scope: str) -> dict[str, Any]:
    """The matches with their local times, best first, under a statement timeout shorter than the tool's: a
    slow search is cancelled by PostgreSQL instead of holding a connection for 30 s.

    scope "all" searches only the conversations that EVERY current active member of this conversation may
    read (chat/search.py conversations_every_member_reads): the result is an event all of them read, so text
    from a conversation one of them is not in never reaches them. For a private 1:1 with the agent that is
    every conversation of the asker's. Not in the asker's tier: this conversation, and what would be shown.
    In either scope nothing older than the room's strictest member's tier keeps (`room_history_since`)."""
    assert ctx.user_id is not None
    zone = _requester_zone(ctx.user_id)
    out: dict[str, Any] = {"query": query, "scope": scope, "timezone": zone.key}
    if scope == "all":
        refused = _beyond_tier(ctx.user_id)
        if refused is not None:
            out |= {"scope": "conversation", "beyond_tier": refused}
    try:
        conversation_for_member(user_id=ctx.user_id, conversation_id=ctx.conversation_id)
    except NotFound:
        return out | {"matches": []}  # not (or no longer) a member here: nothing, as if it were empty
    where = (
        conversations_every_member_reads(conversation_id=ctx.conversation_id)
        if out["scope"] == "all"
        else [ctx.conversation_id]
    )
    try:
        hits = search_within(
            timeout_ms=settings.AGENT_TOOL_SEARCH_TIMEOUT_MS,
            user_id=ctx.user_id,
            query=query,
            match="any",
            limit=limit,
            conversation_ids=where,
            exclude_run_id=ctx.run_id,
            exclude_text_regex=request_pattern(query),
            exclude_search_answers=True,
            since=room_history_since(conversation_id=ctx.conversation_id),
        )
    except ServiceError as exc:  # the timeout, or a bound the selector refuses
        raise ToolError(exc.message) from exc
    out["matches"] = [
        {
            "message_id": h.message_id,
            "seq": h.seq,
            "author": h.author,
            "snippet": h.snippet,
            "rank": h.rank,
            "conversation_id": h.conversation_id,
            "conversation_title": h.conversation_title,
            "sent_at": _iso(h.created_at.astimezone(UTC)),
            "local_time": h.created_at.astimezone(zone).isoformat(timespec="seconds"),
        }
        for h in hits
    ]
    return out


async def search_history(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    query = args["query"]
    scope = args.get("scope", "conversation")
    if any(unicodedata.category(c) == "Cc" for c in query):  # PostgreSQL refuses NUL in text
        raise ToolError("the query may not contain control characters")
    if ctx.user_id is None:
        return {"query": query, "scope": scope, "timezone": DEFAULT_ZONE, "matches": []}
    # thread_sensitive=False: its own thread, not the one thread every run's event writes share.
    return await database_sync_to_async(_search, thread_sensitive=False)(
        ctx=ctx, query=query, limit=args.get("limit", 5), scope=scope
    )
