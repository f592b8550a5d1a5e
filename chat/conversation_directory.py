"""Finding conversations: the caller's sidebar, and the open conversations of their workspaces they
can join (docs/protocol.md §7 "Workspaces and conversation visibility"). Reads that check access,
like chat/selectors.py: a workspace the caller is not in, and a conversation they may not see or
join, answer NotFound whether or not it exists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, F
from django.db.models.functions import Coalesce

from chat.errors import NotFound
from chat.models import AuthorKind, Conversation, Visibility, WorkspaceMember
from chat.selectors import DELETED_AUTHOR, conversations_for_user, parse_uuid, workspace_for_member

# A title search longer than this is refused by the API and cut here.
SEARCH_MAX_CHARS = 100
SIDEBAR_MAX = 200
OPEN_LIST_MAX = 100
# What the preview says for a message its author deleted (its text is emptied).
DELETED_PREVIEW = "message deleted"


@dataclass(frozen=True)
class LastMessage:
    author_id: int | None
    author: str  # the author's username, the agent's name, or "deleted user"
    kind: str  # user | agent
    preview: str  # at most selectors.PREVIEW_CHARS characters
    created_at: datetime
    deleted: bool


@dataclass(frozen=True)
class SidebarItem:
    id: str
    title: str
    workspace_id: str
    workspace_name: str
    agent: str
    agent_mode: str
    role: str
    visibility: str
    head_seq: int
    unread: int
    last_read_seq: int
    last_activity_at: datetime
    last_message: LastMessage | None
    archived: bool


def _last_message(raw: dict[str, Any] | None, agent: str) -> LastMessage | None:
    if raw is None:
        return None
    deleted = raw.get("deleted") is not None
    kind = raw["kind"]
    # A NULL author is the agent only for an agent's answer: a person's message outlives their account.
    author = raw["username"] or ((agent or "agent") if kind == AuthorKind.AGENT else DELETED_AUTHOR)
    return LastMessage(
        author_id=raw["author_id"],
        author=author,
        kind=kind,
        preview=DELETED_PREVIEW if deleted else raw["preview"],
        # PostgreSQL writes a timestamp inside JSON as ISO 8601 with its offset.
        created_at=datetime.fromisoformat(raw["created_at"]),
        deleted=deleted,
    )


def sidebar(
    *,
    user_id: int,
    q: str | None = None,
    archived: bool = False,
    workspace_id: object = None,
    limit: int = 50,
    before_activity: datetime | None = None,
) -> list[SidebarItem]:
    """The caller's live conversations, newest activity first (a conversation without any event
    counts as active at its creation): unarchived ones, or only the archived ones with
    `archived=True`; `q` matches titles case-insensitively; `workspace_id` keeps one workspace (one
    the caller is not in lists nothing); `before_activity` pages on (strictly older than the last
    item's `last_activity_at`). One query, whatever the length (`conversations_for_user`'s)."""
    rows = conversations_for_user(user_id=user_id).select_related("conversation__workspace")
    rows = rows.filter(archived_at__isnull=not archived)
    if q:
        rows = rows.filter(conversation__title__icontains=q[:SEARCH_MAX_CHARS])
    if workspace_id is not None:
        rows = rows.filter(conversation__workspace_id=parse_uuid(workspace_id))
    if before_activity is not None:
        rows = rows.filter(last_activity_at__lt=before_activity)  # type: ignore[misc]  # an annotation
    items = []
    for m in rows[: max(1, min(limit, SIDEBAR_MAX))]:
        c = m.conversation
        items.append(
            SidebarItem(
                id=str(c.id),
                title=c.title,
                workspace_id=str(c.workspace_id),
                workspace_name=c.workspace.name,
                agent=c.agent,
                agent_mode=c.agent_mode,
                role=m.role,
                visibility=c.visibility,
                head_seq=c.last_seq,
                unread=m.unread,  # type: ignore[attr-defined]
                last_read_seq=m.last_read_seq,
                last_activity_at=m.last_activity_at,  # type: ignore[attr-defined]
                last_message=_last_message(m.last_message, c.agent),  # type: ignore[attr-defined]
                archived=m.archived_at is not None,
            )
        )
    return items


@dataclass(frozen=True)
class OpenConversation:
    id: str
    title: str
    workspace_id: str
    agent: str
    members: int
    last_activity_at: datetime


def open_conversations(*, user_id: int, workspace_id: object, q: str | None = None) -> list[OpenConversation]:
    """The open, live conversations of a workspace the caller is a member of that the caller has not
    joined, newest activity first (at most OPEN_LIST_MAX). NotFound for a workspace they are not in."""
    workspace = workspace_for_member(user_id=user_id, workspace_id=workspace_id)
    rows = (
        Conversation.objects.filter(workspace=workspace, visibility=Visibility.OPEN, deleted_at__isnull=True)
        .exclude(memberships__user_id=user_id)
        .annotate(
            activity=Coalesce(F("last_activity_at"), F("created_at")),
            member_count=Count("memberships"),
        )
        .order_by("-activity", "-id")
    )
    if q:
        rows = rows.filter(title__icontains=q[:SEARCH_MAX_CHARS])
    return [
        OpenConversation(
            id=str(c.id),
            title=c.title,
            workspace_id=str(c.workspace_id),
            agent=c.agent,
            members=c.member_count,  # type: ignore[attr-defined]
            last_activity_at=c.activity,  # type: ignore[attr-defined]
        )
        for c in rows[:OPEN_LIST_MAX]
    ]


@dataclass(frozen=True)
class Joinable:
    conversation_id: str
    workspace_role: str


def conversation_for_joining(*, user_id: int, conversation_id: object) -> Joinable:
    """An open, live conversation of a workspace the (active) user is a member of, with the user's
    role in that workspace; NotFound for anything else (a private one, another workspace's, a
    deleted one, one that does not exist), so joining never tells them apart."""
    conv_id = parse_uuid(conversation_id)
    workspace_member = WorkspaceMember.objects.filter(
        workspace_id__in=Conversation.objects.filter(
            id=conv_id, visibility=Visibility.OPEN, deleted_at__isnull=True
        ).values("workspace_id"),
        user_id=user_id,
        user__is_active=True,
    )
    role = workspace_member.values_list("role", flat=True).first()
    if role is None:
        raise NotFound()
    return Joinable(conversation_id=str(conv_id), workspace_role=role)
