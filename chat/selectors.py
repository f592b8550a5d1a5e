"""Reads that check access. `conversation_for_member` is the only way from a client-supplied
conversation id to a conversation: a conversation that does not exist and one the caller may not
see raise the same `NotFound`, so existence never leaks (PROTOCOL §2, DESIGN §4)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from chat.errors import NotFound
from chat.models import ConversationMember, Event, Message, Notification, Role
from chat.services.events import StoredEvent


@dataclass(frozen=True)
class Access:
    conversation_id: str
    role: str
    head_seq: int
    agent: str
    title: str
    workspace_id: str

    @property
    def can_write(self) -> bool:
        return self.role in (Role.OWNER, Role.MEMBER)

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


def parse_uuid(value: object) -> uuid.UUID:
    """A client-supplied id: anything that is not a UUID is simply not found."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise NotFound()
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound() from exc


def conversation_for_member(*, user_id: int, conversation_id: object) -> Access:
    conv_id = parse_uuid(conversation_id)
    row = (
        ConversationMember.objects.filter(conversation_id=conv_id, user_id=user_id, user__is_active=True)
        .values(
            "role",
            "conversation__last_seq",
            "conversation__agent",
            "conversation__title",
            "conversation__workspace_id",
        )
        .first()
    )
    if row is None:
        raise NotFound()
    return Access(
        conversation_id=str(conv_id),
        role=row["role"],
        head_seq=row["conversation__last_seq"],
        agent=row["conversation__agent"],
        title=row["conversation__title"],
        workspace_id=str(row["conversation__workspace_id"]),
    )


def conversations_for_user(*, user_id: int) -> QuerySet[ConversationMember]:
    return (
        ConversationMember.objects.filter(user_id=user_id)
        .select_related("conversation")
        .order_by("-conversation__created_at")
    )


def events_after(
    *, conversation_id: str, after_seq: int, up_to_seq: int | None = None, limit: int = 1000
) -> list[StoredEvent]:
    """Events with after_seq < seq (≤ up_to_seq), oldest first. Caller has checked access."""
    qs = Event.objects.filter(conversation_id=conversation_id, seq__gt=after_seq)
    if up_to_seq is not None:
        qs = qs.filter(seq__lte=up_to_seq)
    return [StoredEvent.from_row(row) for row in qs.order_by("seq")[:limit]]


def events_before(
    *, conversation_id: str, before_seq: int | None, limit: int, retention_days: int | None = None
) -> tuple[list[StoredEvent], bool]:
    """A history page: up to `limit` events with seq < before_seq, oldest first, and has_more.

    `retention_days` is the caller's tier's history retention: older events are not served (the
    page ends there with has_more false). Members of one conversation on different tiers each
    see as far back as their own tier allows."""
    qs = Event.objects.filter(conversation_id=conversation_id)
    if retention_days is not None:
        qs = qs.filter(created_at__gte=timezone.now() - timedelta(days=retention_days))
    if before_seq is not None:
        qs = qs.filter(seq__lt=before_seq)
    rows = list(qs.order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return [StoredEvent.from_row(row) for row in rows], has_more


def notifications_after(*, user_id: int, after_seq: int, limit: int = 500) -> list[Notification]:
    return list(Notification.objects.filter(user_id=user_id, seq__gt=after_seq).order_by("seq")[:limit])


def search_messages(*, user_id: int, query: str, conversation_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """Messages matching `query` in one conversation, if the user is a member of it.

    Always one conversation: the agent's search result becomes an event every member of the
    conversation reads, so a search over all of the requester's conversations would hand the
    other members text from conversations they are not in (PROTOCOL §6.3)."""
    visible = ConversationMember.objects.filter(user_id=user_id).values("conversation_id")
    qs = Message.objects.filter(conversation_id__in=visible).filter(conversation_id=conversation_id)
    terms = [t for t in query.split() if len(t) > 1][:8]
    if not terms:
        return []
    cond = Q()
    for term in terms:
        cond |= Q(text__icontains=term)
    rows = qs.filter(cond).select_related("author").order_by("-created_at")[:limit]
    return [
        {
            "message_id": str(m.id),
            "seq": m.seq,
            "author": m.author.username if m.author else "agent",
            "text": m.text[:300],
        }
        for m in rows
    ]
