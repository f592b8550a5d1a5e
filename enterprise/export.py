"""Workspace export (REST `GET /api/workspaces/{id}/export/`, docs/operations.md "Workspace export"): the gate and
the streamed archive.

Who: the workspace's owners, when its tier (its best owner's, enterprise/analytics.py `workspace_tier`) has the
`export` capability (chat/tiers.py). Another member: forbidden; anyone else: NotFound, as for a random id.

What: one JSON document (FORMAT), written as it is read, so neither the server nor the database holds a whole
workspace at once: the workspace, its members, then each conversation the owner may see in it (those they are a
member of, and the open ones any member may join; never a private one they are not in, and never a deleted one)
with its members and its events. Events are the exact objects `GET /api/conversations/{id}/events/` answers
(chat/wire/frames.py `StoredEvent.frame`), as far back as the caller's own tier's history retention shows them
there. Each conversation's events are read up to its head as it was when the conversation was reached, so an
export is a consistent snapshot per conversation while the workspace goes on.

How: an async generator of bytes (Django's ASGI handler buffers a sync iterator whole), reading in keyset pages
of PAGE_* rows, each page one query on a database thread, so memory is bounded by a page, not the workspace.

Limits (chat/infra/leases.py): one export of a workspace at a time (a lease renewed while it streams, freed at
its end, or WORKSPACE_EXPORT_LEASE_S after its process died) and WORKSPACE_EXPORT_PER_HOUR started per workspace
in any hour. Neither fails open: with Redis out of reach an export is refused `unavailable`.

Audit: `workspace.exported` once the stream ends, with the exporter and the counts, and `complete: false` for a
download cut short (the client went away, the server stopped).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from chat.errors import ServiceError
from chat.infra import leases
from chat.models import Conversation, ConversationMember, Event, Visibility, WorkspaceMember
from chat.tiers import limits_for
from chat.wire.frames import StoredEvent, encode, rfc3339
from enterprise.analytics import Access, owner_access
from enterprise.audit import audit_record

logger = logging.getLogger(__name__)

FORMAT = "chat-export/1"
# Rows per query (and per chunk sent): big enough that a query's round trip is small beside its rows, small
# enough that a page of the largest events (tool results are bounded) stays a few megabytes.
PAGE_EVENTS = 500
PAGE_CONVERSATIONS = 100
PAGE_MEMBERS = 500
HOUR_S = 3600.0


@dataclass(frozen=True)
class Ticket:
    """An admitted export: who, what, and the lease it holds until its stream ends."""

    user_id: int
    workspace_id: uuid.UUID
    workspace: dict[str, Any]
    retention_days: int | None  # the exporter's own tier's: what the events API shows them
    lease_key: str
    token: str


@dataclass
class Counts:
    members: int = 0
    conversations: int = 0
    events: int = 0
    complete: bool = False
    by_page: list[int] = field(default_factory=list)  # events per query, in order


def export_access(*, user_id: int, workspace_id: object) -> Access:
    access = owner_access(user_id=user_id, workspace_id=workspace_id, what="archive")
    if not access.limits.export:
        raise ServiceError(
            "forbidden", f"workspace export is not part of this workspace's tier ({access.tier}); pro and enterprise"
        )
    return access


def _wait(ms: int) -> str:
    seconds = math.ceil(ms / 1000)
    return f"{math.ceil(seconds / 60)} min" if seconds >= 120 else f"{seconds} s"


def export_start(*, user_id: int, user_tier: str, workspace_id: object) -> Ticket:
    """The gate: access, tier, then the lease and the hourly budget. Raises NotFound, or ServiceError
    forbidden / conflict (an export of this workspace is running) / rate_limited / unavailable."""
    access = export_access(user_id=user_id, workspace_id=workspace_id)
    wid = access.workspace.id
    lease_key = leases.key("export", wid)
    per_hour = int(settings.WORKSPACE_EXPORT_PER_HOUR)
    try:
        admission = leases.admit(
            lease_key=lease_key,
            window_key=leases.key("export-starts", wid),
            lease_s=float(settings.WORKSPACE_EXPORT_LEASE_S),
            limit=per_hour,
            window_s=HOUR_S,
        )
    except leases.LeaseUnavailable as exc:
        logger.warning("workspace export refused: its limits cannot be checked (%s)", exc)
        raise ServiceError(
            "unavailable", "exports are unavailable right now (their limits cannot be checked); retry shortly", 5000
        ) from exc
    if admission.refused_by == "busy":
        raise ServiceError(
            "conflict",
            f"an export of this workspace is already running; retry in {_wait(admission.retry_after_ms)}",
            admission.retry_after_ms,
        )
    if not admission.admitted:
        raise ServiceError(
            "rate_limited",
            f"export limit reached: {per_hour} per workspace per hour; retry in {_wait(admission.retry_after_ms)}",
            admission.retry_after_ms,
        )
    workspace = {
        "id": str(wid),
        "name": access.workspace.name,
        "tier": access.tier,
        "created_at": rfc3339(access.workspace.created_at),
    }
    retention = limits_for(user_tier).history_retention_days
    return Ticket(user_id, wid, workspace, retention, lease_key, admission.token)


def filename(ticket: Ticket, now: datetime) -> str:
    return f"workspace-{ticket.workspace_id}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"


# --- the pages (each one query, run on a database thread) ---------------------------------------------------------


def _member_json(row: WorkspaceMember | ConversationMember) -> dict[str, Any]:
    # The shape of GET /api/workspaces/{id}/members/ and /api/conversations/{id}/members/, plus when they joined.
    return {
        "user": {"id": row.user_id, "username": row.user.username},
        "role": row.role,
        "joined_at": rfc3339(row.joined_at),
    }


def workspace_members_page(workspace_id: uuid.UUID, after_id: int) -> tuple[list[str], int]:
    rows = list(
        WorkspaceMember.objects.filter(workspace_id=workspace_id, id__gt=after_id)
        .select_related("user")
        .order_by("id")[:PAGE_MEMBERS]
    )
    return [encode(_member_json(r)) for r in rows], rows[-1].id if rows else after_id


def conversations_page(ticket: Ticket, after: uuid.UUID | None) -> list[dict[str, Any]]:
    """The next conversations the exporter may see, by id, each with its members (two queries)."""
    mine = ConversationMember.objects.filter(conversation_id=OuterRef("id"), user_id=ticket.user_id)
    rows = Conversation.objects.filter(workspace_id=ticket.workspace_id, deleted_at__isnull=True).filter(
        Q(visibility=Visibility.OPEN) | Exists(mine)
    )
    if after is not None:
        rows = rows.filter(id__gt=after)
    found = list(rows.order_by("id")[:PAGE_CONVERSATIONS])
    members: dict[uuid.UUID, list[dict[str, Any]]] = {c.id: [] for c in found}
    memberships = ConversationMember.objects.filter(conversation_id__in=list(members)).select_related("user")
    for m in memberships.order_by("conversation_id", "id"):
        members[m.conversation_id].append(_member_json(m))
    return [
        {
            "id": str(c.id),
            "title": c.title,
            "agent": c.agent or None,
            "agent_mode": c.agent_mode,
            "visibility": c.visibility,
            "created_at": rfc3339(c.created_at),
            "head_seq": c.last_seq,
            "members": members[c.id],
        }
        for c in found
    ]


def events_page(conversation_id: str, after_seq: int, head_seq: int, since: datetime | None) -> tuple[list[str], int]:
    """Up to PAGE_EVENTS events after `after_seq` up to the head, oldest first, as encoded frames, and the
    last one's seq (the next page's `after_seq`)."""
    rows = Event.objects.filter(conversation_id=conversation_id, seq__gt=after_seq, seq__lte=head_seq)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    found = list(rows.order_by("seq")[:PAGE_EVENTS])
    return [StoredEvent.from_row(row).encoded() for row in found], found[-1].seq if found else after_seq


def _record(ticket: Ticket, counts: Counts) -> None:
    audit_record(
        "workspace.exported",
        ticket.user_id,
        workspace_id=ticket.workspace_id,
        data={
            "members": counts.members,
            "conversations": counts.conversations,
            "events": counts.events,
            "complete": counts.complete,
        },
    )


# --- the stream ---------------------------------------------------------------------------------------------------


class _Lease:
    """Renews the ticket's lease once a third of its time to live has gone by, so it outlives every page."""

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.ttl_s = float(settings.WORKSPACE_EXPORT_LEASE_S)
        self.renewed = time.monotonic()

    async def keep(self) -> None:
        if time.monotonic() - self.renewed < self.ttl_s / 3:
            return
        self.renewed = time.monotonic()
        if not await leases.renew(lease_key=self.ticket.lease_key, token=self.ticket.token, lease_s=self.ttl_s):
            logger.warning("workspace export %s: its lease was lost; the export goes on", self.ticket.workspace_id)


async def export_stream(ticket: Ticket, counts: Counts | None = None) -> AsyncIterator[bytes]:
    """The archive, chunk by chunk: one chunk per page read. Frees the lease and writes the audit entry when it
    ends, however it ends (`counts`, if given, is filled in as it goes: tests and callers may watch it)."""
    counts = counts if counts is not None else Counts()
    lease = _Lease(ticket)
    now = timezone.now()
    since = None if ticket.retention_days is None else now - timedelta(days=ticket.retention_days)
    try:
        head = {"format": FORMAT, "workspace": ticket.workspace, "exported_at": rfc3339(now)}
        yield (encode(head)[:-1] + ',"members":[').encode()
        after_member = 0
        while True:
            members, after_member = await database_sync_to_async(workspace_members_page)(
                ticket.workspace_id, after_member
            )
            if members:
                yield (("," if counts.members else "") + ",".join(members)).encode()
            counts.members += len(members)
            if len(members) < PAGE_MEMBERS:
                break
        yield b'],"conversations":['
        after: uuid.UUID | None = None
        while True:
            page = await database_sync_to_async(conversations_page)(ticket, after)
            for conv in page:
                opening = ("," if counts.conversations else "") + encode(conv)[:-1] + ',"events":['
                yield opening.encode()
                counts.conversations += 1
                async for chunk in _events(conv["id"], conv["head_seq"], since, counts, lease):
                    yield chunk
                yield b"]}"
            await lease.keep()  # also between pages of conversations with few or no events
            if len(page) < PAGE_CONVERSATIONS:
                break
            after = uuid.UUID(page[-1]["id"])
        yield b"]}"
        counts.complete = True
    finally:
        await leases.release(lease_key=ticket.lease_key, token=ticket.token)
        await database_sync_to_async(_record)(ticket, counts)


async def _events(
    conversation_id: str, head_seq: int, since: datetime | None, counts: Counts, lease: _Lease
) -> AsyncIterator[bytes]:
    after_seq = 0
    first = True
    while after_seq < head_seq:
        frames, after_seq = await database_sync_to_async(events_page)(conversation_id, after_seq, head_seq, since)
        counts.by_page.append(len(frames))
        if not frames:
            return
        yield (("" if first else ",") + ",".join(frames)).encode()
        first = False
        counts.events += len(frames)
        await lease.keep()
        if len(frames) < PAGE_EVENTS:
            return
