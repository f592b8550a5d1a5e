"""Reads that check access. `conversation_for_member` is the only way from a client-supplied
conversation id to a conversation: a conversation that does not exist and one the caller may not
see raise the same `NotFound`, so existence never leaks (docs/protocol.md §2)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, IntegerField, JSONField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, JSONObject, Left
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.utils import get_md5_hash_password

from chat.errors import NotFound
from chat.models import (
    AgentMode,
    AuthorKind,
    Conversation,
    ConversationMember,
    Event,
    Message,
    Notification,
    Role,
    User,
    Visibility,
    Workspace,
    WorkspaceMember,
)
from chat.wire.frames import StoredEvent


@dataclass(frozen=True)
class Access:
    conversation_id: str
    role: str
    head_seq: int
    agent: str
    title: str
    workspace_id: str
    agent_mode: str = AgentMode.AUTO
    visibility: str = Visibility.PRIVATE

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


# A soft-deleted conversation (chat/services/conversation_admin.py) is gone for every reader at once:
# every read from a client's id goes through this filter, so it answers like one that never existed.
LIVE = Q(conversation__deleted_at__isnull=True)


def conversation_for_member(*, user_id: int, conversation_id: object) -> Access:
    conv_id = parse_uuid(conversation_id)
    row = (
        ConversationMember.objects.filter(LIVE, conversation_id=conv_id, user_id=user_id, user__is_active=True)
        .values(
            "role",
            "conversation__last_seq",
            "conversation__agent",
            "conversation__agent_mode",
            "conversation__title",
            "conversation__workspace_id",
            "conversation__visibility",
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
        agent_mode=row["conversation__agent_mode"],
        visibility=row["conversation__visibility"],
    )


# The unread count of a conversation stops here: counting a backlog of millions would read every row
# of it for a badge that shows "999+" anyway (docs/protocol.md §10).
UNREAD_COUNT_MAX = 1000
# Characters of the newest message a conversation list item previews.
PREVIEW_CHARS = 120


class _CappedCount(Subquery):
    """COUNT(*) over a sliced subquery: stops at the slice's size instead of reading every row."""

    template = "(SELECT COUNT(*) FROM (%(subquery)s) AS capped)"
    output_field = IntegerField()


def conversations_for_user(*, user_id: int) -> QuerySet[ConversationMember]:
    """The user's memberships of live conversations with their conversations, newest activity
    first, each annotated with `unread` (messages above the user's marker the user did not write,
    capped), `last_activity_at` (the conversation's newest event, else its creation: a conversation
    with no event yet counts as active when it was created, so a new one is at the top) and
    `last_message` (a dict of `author_id`, `username`, `kind`, `preview`, `created_at`, `deleted`,
    or None). One query for the whole list."""
    messages = Message.objects.filter(conversation_id=OuterRef("conversation_id"), seq__isnull=False)
    unread = messages.filter(seq__gt=OuterRef("last_read_seq")).exclude(author_id=user_id).values("id")
    newest = messages.order_by("-seq")
    summary = JSONObject(
        author_id="author_id",
        username="author__username",
        kind="author_kind",
        preview=Left("text", PREVIEW_CHARS),
        created_at="created_at",
        deleted="deleted_at",
    )
    return (
        ConversationMember.objects.filter(LIVE, user_id=user_id)
        .select_related("conversation")
        .annotate(
            unread=_CappedCount(unread[:UNREAD_COUNT_MAX]),
            last_activity_at=Coalesce(F("conversation__last_activity_at"), F("conversation__created_at")),
            last_message=Subquery(newest.values(summary=summary)[:1], output_field=JSONField()),
        )
        .order_by("-last_activity_at", "-conversation__created_at", "-conversation_id")
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


# A person's messages outlive their account (author becomes NULL): never shown as the agent's.
DELETED_AUTHOR = "deleted user"


def author_name(message: Message) -> str:
    """Who wrote `message`, by its author kind: a NULL author is the agent only for agent messages."""
    if message.author is not None:
        return message.author.username
    return "agent" if message.author_kind == AuthorKind.AGENT else DELETED_AUTHOR


# The longest message text a search result carries whole; a longer one ends in an ellipsis.
SEARCH_TEXT_CHARS = 500


def user_tier(*, user_id: int) -> str:
    """The user's tier ("free" for a user that is gone)."""
    return User.objects.filter(id=user_id).values_list("tier", flat=True).first() or "free"


def user_time_zone(*, user_id: int) -> str:
    """The IANA zone the user's page reported ("" for none: UTC); "" for a user that is gone."""
    return User.objects.filter(id=user_id).values_list("time_zone", flat=True).first() or ""


# --- reads behind a check already made --------------------------------------------------------
# Each of these serves a caller that has already resolved access (a subscription, the caller's
# own user id, a membership from `conversation_for_member`): they take ids the server holds, never
# one straight from a client.


def conversation_head(*, conversation_id: str) -> int:
    """The newest seq of a conversation the caller may read."""
    return int(Conversation.objects.filter(id=conversation_id).values_list("last_seq", flat=True).get())


def conversation_heads(*, conversation_ids: list[str]) -> list[int]:
    """The newest seq of each conversation, in one query (0 for one that no longer exists)."""
    rows = Conversation.objects.filter(id__in=conversation_ids).values_list("id", "last_seq")
    found = {str(conversation_id): int(last_seq) for conversation_id, last_seq in rows}
    return [found.get(c, 0) for c in conversation_ids]


def conversation_members(*, conversation_id: str) -> list[ConversationMember]:
    """The members of a conversation the caller is a member of, with their users."""
    return list(ConversationMember.objects.filter(conversation_id=conversation_id).select_related("user"))


def member_names(*, conversation_id: str) -> list[tuple[int, str, int]]:
    """(user id, username, read marker) of every member, by username: the presence list's rows."""
    return list(
        ConversationMember.objects.filter(conversation_id=conversation_id)
        .values_list("user_id", "user__username", "last_read_seq")
        .order_by("user__username")
    )


@dataclass(frozen=True)
class SubscriptionState:
    """What a `subscribe` reply tells the caller about the conversation and their own place in it."""

    head_seq: int
    last_read_seq: int
    draft: str
    draft_updated_at: datetime | None


def subscription_state(*, conversation_id: str, user_id: int) -> SubscriptionState:
    """The head, the member's read marker and draft: one query (NotFound once the membership is gone)."""
    row = (
        ConversationMember.objects.filter(LIVE, conversation_id=conversation_id, user_id=user_id)
        .values_list("conversation__last_seq", "last_read_seq", "draft", "draft_updated_at")
        .first()
    )
    if row is None:
        raise NotFound()
    return SubscriptionState(int(row[0]), int(row[1]), row[2], row[3])


def member_archived(*, conversation_id: str, user_id: int) -> bool:
    """Whether the member archived the conversation for themself (False when not a member)."""
    return ConversationMember.objects.filter(
        conversation_id=conversation_id, user_id=user_id, archived_at__isnull=False
    ).exists()


def messages_before(*, conversation_id: str, before_seq: int, limit: int) -> list[tuple[str, str]]:
    """(author kind, text) of the `limit` messages before `before_seq`, oldest first."""
    rows = list(
        Message.objects.filter(conversation_id=conversation_id, seq__lt=before_seq)
        .order_by("-seq")
        .values_list("author_kind", "text")[:limit]
    )
    rows.reverse()
    return rows


def notification_head(*, user_id: int) -> int:
    return int(User.objects.filter(id=user_id).values_list("notification_seq", flat=True).get())


def user_is_active(*, user_id: int) -> bool:
    return User.objects.filter(id=user_id, is_active=True).exists()


def user_for_token(*, user_id: int | str | None) -> User | None:
    """The user a verified token names (active or not: the caller decides what inactive means), with
    what `token_holder` compares the token's revocation claims against."""
    try:
        user_pk = int(user_id or "")
    except ValueError:
        return None  # only a token signed with our key gets here, and ours always name an integer id
    fields = ("id", "username", "tier", "is_active", "password", "token_version")
    return User.objects.filter(id=user_pk).only(*fields).first()


# The user's token version a token was minted under (chat/services/accounts.py puts it in every pair
# the token endpoint mints). A token without it was minted under version 0: valid only until the
# user's first log-out-everywhere or deactivation.
TOKEN_VERSION_CLAIM = "ver"


def token_holder(claims: Mapping[str, Any]) -> User | None:
    """The active user a verified token belongs to, or None when the token no longer stands: the user
    is gone or inactive, the password changed since it was minted (simplejwt's password claim, which
    CHECK_REVOKE_TOKEN puts in every token it mints), or the user logged out everywhere or was
    deactivated since (the version claim). Refresh, REST and the socket all ask this one question."""
    user = user_for_token(user_id=claims.get(str(jwt_settings.USER_ID_CLAIM)))
    if user is None or not user.is_active:
        return None
    password_claim = claims.get(str(jwt_settings.REVOKE_TOKEN_CLAIM))
    # No password claim: a token from before revocation existed, which cannot be checked; refused.
    if not isinstance(password_claim, str) or not constant_time_compare(
        password_claim, get_md5_hash_password(user.password)
    ):
        return None
    version = claims.get(TOKEN_VERSION_CLAIM, 0)
    if type(version) is not int or version != user.token_version:
        return None
    return user


def workspaces_for_user(*, user_id: int) -> list[WorkspaceMember]:
    return list(WorkspaceMember.objects.filter(user_id=user_id).select_related("workspace"))


def workspace_for_member(*, user_id: int, workspace_id: object) -> Workspace:
    """The workspace if the user is a member of it; NotFound otherwise (same answer for both)."""
    member = (
        WorkspaceMember.objects.select_related("workspace")
        .filter(workspace_id=parse_uuid(workspace_id), user_id=user_id)
        .first()
    )
    if member is None:
        raise NotFound()
    return member.workspace


def workspace_members(*, workspace: Workspace) -> list[WorkspaceMember]:
    return list(WorkspaceMember.objects.filter(workspace=workspace).select_related("user"))
