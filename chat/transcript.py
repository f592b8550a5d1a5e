"""A conversation's transcript for the analyst's conversation tools (agents/conversation_digest.py): selectors.

Both read one conversation, and only for an active member of it (NotFound otherwise, whether or not it exists):
their result becomes an event every member reads, so it never holds text from elsewhere. Deleted messages are
left out; texts are cut to TRANSCRIPT_TEXT_CHARS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chat.errors import NotFound
from chat.models import AuthorKind, ConversationMember, Message
from chat.search import search
from chat.selectors import author_name, parse_uuid

TRANSCRIPT_TEXT_CHARS = 300


def _visible(user_id: int, conversation_id: object) -> Any:
    conv = parse_uuid(conversation_id)
    member = ConversationMember.objects.filter(
        conversation_id=conv, user_id=user_id, user__is_active=True, conversation__deleted_at__isnull=True
    )
    if not member.exists():
        raise NotFound()
    return Message.objects.filter(conversation_id=conv, seq__isnull=False, deleted_at__isnull=True)


def _cut(text: str) -> str:
    return text if len(text) <= TRANSCRIPT_TEXT_CHARS else text[: TRANSCRIPT_TEXT_CHARS - 1] + "…"


def _row(m: Message) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "author": author_name(m),
        "kind": m.author_kind,
        "text": _cut(m.text),
        "created_at": m.created_at,
    }


def transcript(
    *,
    user_id: int,
    conversation_id: object,
    since: datetime | None,
    limit: int,
    exclude_run_id: str | None = None,
) -> list[dict[str, Any]]:
    """The newest `limit` messages (people's and the agent's) since `since`, oldest first."""
    qs = _visible(user_id, conversation_id)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if exclude_run_id is not None:  # the question that started this run is not part of what it summarises
        qs = qs.exclude(triggered_runs__id=exclude_run_id)
    rows = list(qs.select_related("author").order_by("-seq")[:limit])
    return [_row(m) for m in reversed(rows)]


def said_by(
    *, user_id: int, conversation_id: object, username: str, terms: list[str], limit: int, exclude_run_id: str | None
) -> list[dict[str, Any]]:
    """Messages written by `username` in the conversation: with `terms`, those holding any of them, best match
    first (chat/search.py's full-text ranking, then newest); without, all of them, newest first."""
    visible = _visible(user_id, conversation_id)  # NotFound for anyone but an active member
    if terms:
        hits = search(
            user_id=user_id,
            query=" ".join(terms),
            match="any",
            limit=limit,
            conversation_ids=[str(parse_uuid(conversation_id))],
            author_username=username,
            exclude_run_id=exclude_run_id,
        )
        return [
            {
                "seq": h.seq,
                "author": h.author,
                "kind": AuthorKind.USER,
                "text": _cut(h.text),
                "created_at": h.created_at,
            }
            for h in hits
        ]
    qs = visible.filter(author__username__iexact=username, author_kind=AuthorKind.USER)
    if exclude_run_id is not None:
        qs = qs.exclude(triggered_runs__id=exclude_run_id)
    return [_row(m) for m in qs.select_related("author").order_by("-seq")[:limit]]
