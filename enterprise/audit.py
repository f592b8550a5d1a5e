"""The audit log: who did what, when (docs/operations.md "Audit log").

`audit_record` appends one entry inside the caller's transaction, so an entry exists exactly when the
change it records committed. Entries are append-only (enterprise/models.py refuses update and delete in
Python; on PostgreSQL a trigger refuses them in the database, migration 0002); only `audit_purge`, the
retention purge, deletes, and it says so to the trigger with a transaction-local setting.

`audit_page` is the owners' read (REST `GET /api/workspaces/{id}/audit/`): a non-member of the workspace
is told it does not exist, a member who is not an owner is refused.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from chat.errors import NotFound, ServiceError
from chat.models import Conversation, Role, User, WorkspaceMember
from chat.selectors import parse_uuid
from enterprise.models import AuditEntry

# Entries deleted per purge transaction: a long-idle log is purged in short transactions, not one
# that holds its locks for the whole backlog.
PURGE_BATCH = 5000
# Entries per REST page: the default and the most a caller may ask for.
PAGE_DEFAULT = 50
PAGE_MAX = 200


def audit_record(
    action: str,
    actor: User | int | None,
    workspace_id: uuid.UUID | str | None = None,
    conversation_id: uuid.UUID | str | None = None,
    target: str = "",
    data: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEntry:
    """Append one entry, in the caller's transaction (outside one, it commits at once).

    `actor`: the user who acted (a User or their id), None for the system or an unknown actor; their
    username is copied, so the entry still names them after the account is gone. A conversation's
    entry carries its workspace when none is given, so the workspace's owners see it. `ip`: only when
    it matters (staff logins); "unknown" and malformed addresses are stored as none."""
    actor_id, username = _actor(actor)
    if conversation_id is not None and workspace_id is None:
        workspace_id = Conversation.objects.filter(id=conversation_id).values_list("workspace_id", flat=True).first()
    return AuditEntry.objects.create(
        at=timezone.now(),
        actor_id=actor_id,
        actor_username=username,
        action=action[:64],
        workspace_id=workspace_id,
        conversation_id=conversation_id,
        target=target[:200],
        data=data or {},
        ip=_address(ip),
    )


def _actor(actor: User | int | None) -> tuple[int | None, str]:
    if actor is None:
        return None, ""
    if isinstance(actor, User):
        return actor.pk, actor.username
    username = User.objects.filter(id=actor).values_list("username", flat=True).first()
    return (actor, username) if username is not None else (None, "")


def _address(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def audit_purge(now: datetime | None = None) -> int:
    """Delete the entries older than AUDIT_RETENTION_DAYS; returns how many. Each batch is its own
    transaction, flagged to the PostgreSQL trigger as the purge (`SET LOCAL` ends with it)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    purged = 0
    while True:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL enterprise.audit_purge = 'on'")
            ids = list(AuditEntry.objects.filter(at__lt=cutoff).values_list("id", flat=True)[:PURGE_BATCH])
            if ids:
                purged += AuditEntry.objects.filter(id__in=ids).purge()
        if len(ids) < PURGE_BATCH:
            return purged


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_before: int | None  # the `before` of the next (older) page; None: this is the last


def audit_workspace_for_owner(*, user_id: int, workspace_id: object) -> uuid.UUID:
    """The workspace's id if the user owns it. A non-member: NotFound (as if it did not exist); a
    member who is not an owner: `forbidden`."""
    wid = parse_uuid(workspace_id)
    role = WorkspaceMember.objects.filter(workspace_id=wid, user_id=user_id).values_list("role", flat=True).first()
    if role is None:
        raise NotFound()
    if role != Role.OWNER:
        raise ServiceError("forbidden", "only a workspace owner may read its audit log")
    return wid


def audit_page(
    *,
    workspace_id: uuid.UUID,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = PAGE_DEFAULT,
) -> AuditPage:
    """The workspace's entries, newest first (by id: the order they were written), `limit` of them
    (1..PAGE_MAX), older than entry `before`, with `since <= at < until`, of one `action`."""
    if not 1 <= limit <= PAGE_MAX:
        raise ServiceError("bad_request", f"limit must be 1-{PAGE_MAX}")
    if since is not None and until is not None and since >= until:
        raise ServiceError("bad_request", "from must be before to")
    rows = AuditEntry.objects.filter(workspace_id=workspace_id)
    if action:
        rows = rows.filter(action=action)
    if since is not None:
        rows = rows.filter(at__gte=since)
    if until is not None:
        rows = rows.filter(at__lt=until)
    if before is not None:
        rows = rows.filter(id__lt=before)
    found = list(rows.order_by("-id")[: limit + 1])
    more = len(found) > limit
    entries = found[:limit]
    return AuditPage(entries, entries[-1].id if more else None)
