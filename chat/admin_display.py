"""How the admin shows what happened: durations in ms, a conversation's transcript and a run's
timeline read from the event log. Shared by chat/admin.py, agents/admin.py and monitoring/admin.py,
which must not import each other, so it sits on a floor below them.

Times everywhere in the admin have seconds (chatsite/formats: Y-m-d H:i:s, in UTC); a timeline gives
each event's offset in ms from the run's start. Everything is rendered with format_html (escaped)
and styled by chat/static/chat/admin.css: the Content-Security-Policy refuses inline style.

The agent is "assistant" here, as on the conversation page (chat/static/chat/chat.js).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from chat.models import Event

AGENT_NAME = "assistant"
# Events a transcript shows at most (the newest ones); a timeline shows every event of its run.
TRANSCRIPT_EVENTS = 500
# Text of one line (a tool's arguments or result, a thought): enough to read, not a whole payload.
MAX_SNIPPET_CHARS = 600


def ms(value: float | None) -> str:
    """A duration as `1,234 ms`; `-` when there is none."""
    return "-" if value is None else f"{round(value):,} ms"


def ms_between(start: datetime | None, end: datetime | None) -> str:
    return "-" if start is None or end is None else ms((end - start).total_seconds() * 1000)


def snippet(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= MAX_SNIPPET_CHARS else text[:MAX_SNIPPET_CHARS] + " …"


def _who(user: dict[str, Any] | None, fallback: str = "someone") -> str:
    return str(user["username"]) if isinstance(user, dict) and user.get("username") else fallback


@dataclass(frozen=True)
class Line:
    """One event as a person reads it: who, what kind of step, and the text."""

    who: str
    kind: str  # message, thinking, tool, result, approval, answer, failed, cancelled, started, event
    text: str


def describe(event_type: str, data: dict[str, Any]) -> Line:
    """What an event says, in a line (every durable event type, and a fallback for any other)."""
    if event_type == "message":
        author = data.get("author") or {}
        who = AGENT_NAME if author.get("kind") == "agent" else _who(author, "deleted user")
        return Line(who, "message", str(data.get("text", "")))
    if event_type == "agent_started":
        return Line(AGENT_NAME, "started", f"started (queued {ms(data.get('queued_ms'))})")
    if event_type == "agent_thinking":
        return Line(AGENT_NAME, "thinking", f"thinking: {snippet(data.get('text', ''))}")
    if event_type == "tool_executing":
        return Line(AGENT_NAME, "tool", f"calls {data.get('tool')} {snippet(data.get('arguments', {}))}")
    if event_type == "tool_completed":
        ok = bool(data.get("ok"))
        result = data.get("result")
        shown = result.get("error", result) if isinstance(result, dict) and not ok else result
        verdict = "returned" if ok else "failed"
        return Line(
            AGENT_NAME,
            "result" if ok else "failed",
            f"{data.get('tool')} {verdict} in {ms(data.get('duration_ms'))}: {snippet(shown)}",
        )
    if event_type == "approval_requested":
        return Line(
            AGENT_NAME,
            "approval",
            f"asks an {data.get('approver_role')} to approve {data.get('tool')} "
            f"{snippet(data.get('arguments', {}))}: {data.get('reason', '')}",
        )
    if event_type == "approval_resolved":
        by = _who(data.get("by"), "nobody in time")
        return Line(by, "approval", f"{data.get('decision')} {snippet(data.get('arguments', {}))}")
    if event_type == "agent_delta":
        return Line(AGENT_NAME, "answer", f"streams: {snippet(data.get('text', ''))}")
    if event_type == "agent_completed":
        return Line(AGENT_NAME, "answer", str(data.get("text", "")))
    if event_type == "agent_failed":
        error = data.get("error") or {}
        return Line(AGENT_NAME, "failed", f"failed ({error.get('code')}): {error.get('message', '')}")
    if event_type == "agent_cancelled":
        partial = data.get("partial_text") or ""
        text = f"cancelled by {_who(data.get('by'))}" + (f"; answer so far: {snippet(partial)}" if partial else "")
        return Line(AGENT_NAME, "cancelled", text)
    if event_type == "conversation_updated":
        return Line(_who(data.get("by")), "event", f"set the title to {data.get('title')!r}, {data.get('visibility')}")
    if event_type in MEMBER_EVENTS:
        user, role = _who(data.get("user")), data.get("role")
        return Line(_who(data.get("by"), "staff"), "event", MEMBER_EVENTS[event_type].format(user=user, role=role))
    return Line("", "event", f"{event_type} {snippet(data)}")


# How the transcript words the membership events (docs/protocol.md §4).
MEMBER_EVENTS = {
    "member_joined": "{user} joined as {role}",
    "member_left": "{user} left",
    "member_role_changed": "{user} is now {role}",
}


def transcript(conversation_id: Any) -> SafeString:
    """The conversation as its members saw it: messages, and the assistant's thinking, tool calls,
    approvals and answers, from the event log (the newest TRANSCRIPT_EVENTS, oldest first; answer
    chunks left out, since the completed answer repeats them)."""
    rows = list(
        Event.objects.filter(conversation_id=conversation_id)
        .exclude(type="agent_delta")
        .order_by("-seq")
        .values_list("seq", "type", "data", "created_at")[:TRANSCRIPT_EVENTS]
    )
    rows.reverse()
    if not rows:
        return format_html('<p class="transcript-empty">{}</p>', "No events yet.")
    lines = ((seq, created_at, describe(kind, data)) for seq, kind, data, created_at in rows)
    return format_html(
        '<div class="transcript">{}{}</div>',
        format_html('<p class="transcript-note">{}</p>', f"The last {TRANSCRIPT_EVENTS} events.")
        if rows[0][0] > 1 and len(rows) == TRANSCRIPT_EVENTS
        else "",
        format_html_join(
            "",
            '<div class="transcript-line transcript-{}"><span class="transcript-seq">#{}</span> '
            '<time class="transcript-time" datetime="{}">{}</time> <b class="transcript-who">{}</b> '
            '<span class="transcript-text">{}</span></div>',
            (
                (line.kind, seq, at.isoformat(), at.strftime("%H:%M:%S"), line.who or "-", line.text)
                for seq, at, line in lines
            ),
        ),
    )


def timeline(run_id: Any) -> SafeString:
    """A run's events in order with their offset in ms from the run's start (its first event,
    agent_started), answer chunks folded into one row (a long answer has thousands)."""
    events = list(Event.objects.filter(run_id=run_id).order_by("seq").values_list("seq", "type", "data", "created_at"))
    if not events:
        return format_html('<p class="timeline-empty">{}</p>', "No events.")
    origin = events[0][3]
    rows: list[tuple[str, str, str, str, str]] = []
    chunks: list[tuple[int, datetime, str]] = []

    def fold() -> None:
        if chunks:
            text = "".join(c[2] for c in chunks)
            offsets = f"{_offset(origin, chunks[0][1])} … {_offset(origin, chunks[-1][1])}"
            what = f"{len(chunks)} chunk(s), {len(text):,} characters: {snippet(text)}"
            rows.append((offsets, f"#{chunks[0][0]}–{chunks[-1][0]}", "agent_delta", "answer", what))
            chunks.clear()

    for seq, kind, data, created_at in events:
        if kind == "agent_delta":
            chunks.append((seq, created_at, str(data.get("text", ""))))
            continue
        fold()
        line = describe(kind, data)
        rows.append((_offset(origin, created_at), f"#{seq}", kind, line.kind, f"{line.who} {line.text}".strip()))
    fold()
    return _table(
        "timeline",
        ("offset", "seq", "event", "what"),
        (
            (offset, seq, kind, format_html('<span class="timeline-{}">{}</span>', css, what))
            for offset, seq, kind, css, what in rows
        ),
    )


def _offset(origin: datetime, at: datetime) -> str:
    delta = (at - origin).total_seconds() * 1000
    return ("+" if delta >= 0 else "") + ms(delta)


def _table(css: str, headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> SafeString:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html('<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', css, head, body)
