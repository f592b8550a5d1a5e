"""The analyst's conversation tools: an extractive summary of this conversation, and what a member said.

Extractive and honest: every line of a summary is a message as written (cut to a length), picked by rules a
reader can check, never reworded:
- who said what: each author's number of messages and their latest one;
- decisions: people's messages with a decision phrase (DECISION: "we decided", "let's", "agreed", "go with", ...);
- open questions: people's questions (a "?") that no later message from someone else takes up, i.e. shares
  none of the question's words of four letters or more (the agent's answers count as taking it up).
Messages to the assistant and its answers count as messages but are not decisions or questions.

Reads through chat/transcript.py, which lets only an active member of the conversation read it; the
`summaries` capability of the asker's tier (chat/tiers.py) is required, like every tier's default.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async

from agents.sandbox import ToolError
from agents.tool_context import ToolContext
from agents.tools_conversation import Clock, utc_now
from chat.errors import NotFound
from chat.models import User
from chat.tiers import limits_for
from chat.transcript import said_by, transcript

MAX_SUMMARY_HOURS = 24 * 30
SUMMARY_MESSAGES = 300  # the newest messages a summary reads
SAID_RESULTS = 10
MAX_TOPIC_CHARS = 200
DECISION = re.compile(
    r"\b(we decided|decided to|decision:|let'?s go|let'?s|agreed|we agree|go with|we will|we'll|approved|"
    r"final answer|settled on)\b",
    re.IGNORECASE,
)
TO_ASSISTANT = re.compile(r"@assistant\b", re.IGNORECASE)
WORD = re.compile(r"[^\W\d_]{4,}")
STOP_WORDS = frozenset(
    "that this what when where which with would could should there their about have from they them then than"
    " will your just also into only been were does some more".split()
)

TOPIC_STOP_WORDS = frozenset("the and for our any all you are was what how about with that this".split())


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)} - STOP_WORDS


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _require_summaries(user_id: int) -> None:
    tier = User.objects.filter(id=user_id).values_list("tier", flat=True).first() or "free"
    if "summaries" not in limits_for(tier).analyst:
        raise ToolError(f"conversation summaries are not part of the {tier} tier")


def _summary(ctx: ToolContext, hours: int | None, now: datetime) -> dict[str, Any]:
    assert ctx.user_id is not None
    _require_summaries(ctx.user_id)
    since = now - timedelta(hours=hours) if hours else None
    try:
        rows = transcript(
            user_id=ctx.user_id,
            conversation_id=ctx.conversation_id,
            since=since,
            limit=SUMMARY_MESSAGES,
            exclude_run_id=ctx.run_id,
        )
    except NotFound as exc:
        raise ToolError("this conversation was not found") from exc
    people: dict[str, dict[str, Any]] = {}
    decisions, questions = [], []
    for i, row in enumerate(rows):
        cell = people.setdefault(row["author"], {"author": row["author"], "messages": 0})
        cell["messages"] += 1
        cell["latest"] = row["text"]
        line = {"seq": row["seq"], "author": row["author"], "text": row["text"], "at": _iso(row["created_at"])}
        if row["kind"] != "user" or TO_ASSISTANT.search(row["text"]):
            continue
        if DECISION.search(row["text"]):
            decisions.append(line)
        if "?" in row["text"]:
            asked = _words(row["text"])
            later = [r for r in rows[i + 1 :] if r["author"] != row["author"]]
            if not any(asked & _words(r["text"]) for r in later):
                questions.append(line)
    return {
        "query": {
            "conversation_id": ctx.conversation_id,
            "from": _iso(since) if since else None,
            "to": _iso(now),
            "hours": hours,
            "newest_messages_read": SUMMARY_MESSAGES,
        },
        "messages": len(rows),
        "first_at": _iso(rows[0]["created_at"]) if rows else None,
        "last_at": _iso(rows[-1]["created_at"]) if rows else None,
        "people": sorted(people.values(), key=lambda c: (-c["messages"], c["author"])),
        "decisions": decisions[-10:],
        "open_questions": questions[-10:],
    }


async def conversation_summary(ctx: ToolContext, args: dict[str, Any], *, clock: Clock = utc_now) -> dict[str, Any]:
    if ctx.user_id is None:
        raise ToolError("a summary is written for a person; this run has no asking user")
    return await database_sync_to_async(_summary, thread_sensitive=False)(ctx, args.get("hours"), clock())


def _said(ctx: ToolContext, username: str, topic: str) -> dict[str, Any]:
    assert ctx.user_id is not None
    _require_summaries(ctx.user_id)
    # Words that would match nearly every message ("the budget" is about "budget") are left out.
    terms = [t for t in re.findall(r"\w+", topic) if len(t) > 2 and t.lower() not in TOPIC_STOP_WORDS][:8]
    try:
        rows = said_by(
            user_id=ctx.user_id,
            conversation_id=ctx.conversation_id,
            username=username,
            terms=terms,
            limit=SAID_RESULTS,
            exclude_run_id=ctx.run_id,
        )
    except NotFound as exc:
        raise ToolError("this conversation was not found") from exc
    return {
        "query": {"conversation_id": ctx.conversation_id, "username": username, "topic": topic, "terms": terms},
        "matches": [{**r, "created_at": _iso(r["created_at"])} for r in rows],
    }


async def member_said(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    topic = args.get("topic", "")
    if any(unicodedata.category(c) == "Cc" for c in topic):  # PostgreSQL refuses NUL in text
        raise ToolError("the topic may not contain control characters")
    if ctx.user_id is None:
        raise ToolError("this run has no asking user")
    username = args["username"].removeprefix("@")
    return await database_sync_to_async(_said, thread_sensitive=False)(ctx, username, topic)


def digest_tools(clock: Clock) -> list[tuple[str, str, dict[str, Any], Any, float]]:
    """(name, description, JSON schema, function, timeout s) of each conversation tool, for agents/tools.py."""
    return [
        (
            "conversation_summary",
            "An extractive summary of this conversation (or its last `hours`): who said what, decisions, and"
            " open questions, each as written.",
            {
                "type": "object",
                "properties": {"hours": {"type": "integer", "minimum": 1, "maximum": MAX_SUMMARY_HOURS}},
                "additionalProperties": False,
            },
            functools.partial(conversation_summary, clock=clock),
            10.0,
        ),
        (
            "member_said",
            "What a member of this conversation said: about a topic (any of its words), best match first;"
            " without one, newest first.",
            {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "minLength": 1, "maxLength": 150, "pattern": r"^@?[\w.@+-]+$"},
                    "topic": {"type": "string", "maxLength": MAX_TOPIC_CHARS},
                },
                "required": ["username"],
                "additionalProperties": False,
            },
            member_said,
            10.0,
        ),
    ]
