"""Managing a conversation from the page (docs/protocol.md §7 "Workspaces and conversation visibility"):
rename it, open it to its workspace, delete it, archive it for oneself, change members' roles, join an
open one; and purging deleted conversations once their retention is over.

Every change the other members should see live appends a durable event (`conversation_updated`,
`member_joined`, `member_role_changed`; `member_left` is appended by
`conversations.conversation_member_remove`). Deleting appends nothing: the conversation is gone for
every reader at once, and every member's sockets are told `not_found` for it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat.conversation_directory import conversation_for_joining
from chat.errors import ServiceError
from chat.models import Conversation, ConversationMember, Role, User, Visibility
from chat.selectors import Access, conversation_for_member
from chat.services.accounts import membership_revoked, membership_role_changed
from chat.services.conversations import member_event, owners_locked, title_checked, user_ref
from chat.services.events import append_event
from chat.services.notifications import notify_membership

logger = logging.getLogger(__name__)


def _owner_access(conversation_id: str, actor_id: int, what: str) -> Access:
    access = conversation_for_member(user_id=actor_id, conversation_id=conversation_id)
    if not access.is_owner:
        raise ServiceError("forbidden", f"only a conversation owner may {what}")
    return access


@transaction.atomic
def conversation_settings_set(
    *, conversation_id: str, actor_id: int, title: str | None = None, visibility: str | None = None
) -> Access:
    """Rename and/or change the visibility (owner only): one `conversation_updated` event with both
    current values when anything changed, none otherwise. Returns the conversation as the actor sees it."""
    access = _owner_access(conversation_id, actor_id, "rename it or change its visibility")
    changes: dict[str, str] = {}
    if title is not None:
        changes["title"] = title_checked(title)
    if visibility is not None:
        if visibility not in Visibility.values:
            raise ServiceError("bad_request", f"visibility must be one of {', '.join(Visibility.values)}")
        changes["visibility"] = visibility
    current = {"title": access.title, "visibility": access.visibility}
    if all(current[k] == v for k, v in changes.items()):
        return access
    Conversation.objects.filter(id=access.conversation_id).update(**changes)
    current.update(changes)
    append_event(
        conversation_id=access.conversation_id,
        type="conversation_updated",
        data={**current, "by": user_ref(actor_id)},
    )
    return conversation_for_member(user_id=actor_id, conversation_id=access.conversation_id)


def conversation_rename(*, conversation_id: str, actor_id: int, title: str) -> Access:
    return conversation_settings_set(conversation_id=conversation_id, actor_id=actor_id, title=title)


def conversation_visibility_set(*, conversation_id: str, actor_id: int, visibility: str) -> Access:
    return conversation_settings_set(conversation_id=conversation_id, actor_id=actor_id, visibility=visibility)


@transaction.atomic
def conversation_delete(*, conversation_id: str, actor_id: int) -> None:
    """Soft delete (owner only): from the commit on, every read answers not_found as for a
    conversation that never existed, and every member's sockets stop receiving it. The rows stay
    until `conversations_purge_deleted` removes them after the retention period."""
    access = _owner_access(conversation_id, actor_id, "delete it")
    # The row lock orders this after any writer holding it (an event being appended), and the
    # filter makes a second delete racing this one change nothing.
    deleted = Conversation.objects.filter(id=access.conversation_id, deleted_at__isnull=True).update(
        deleted_at=timezone.now(), deleted_by_id=actor_id
    )
    if not deleted:
        raise ServiceError("not_found", "conversation not found")
    member_ids = ConversationMember.objects.filter(conversation_id=access.conversation_id).values_list(
        "user_id", flat=True
    )
    for user_id in member_ids:
        membership_revoked(user_id=user_id, conversation_id=access.conversation_id)  # once this commits


@transaction.atomic
def conversation_restore_by_staff(*, conversation_id: str) -> bool:
    """Staff undo a delete before it is purged: readable again for its members from the commit on
    (their sockets subscribe again like after any not_found). False when it was not deleted."""
    return bool(
        Conversation.objects.filter(id=conversation_id, deleted_at__isnull=False).update(
            deleted_at=None, deleted_by=None
        )
    )


@transaction.atomic
def conversation_archive(*, conversation_id: str, user_id: int, archived: bool) -> bool:
    """Archive (or unarchive) the conversation for the caller alone: out of their sidebar (or back),
    nothing changes for anyone else. Any member, viewers included. Returns `archived`."""
    access = conversation_for_member(user_id=user_id, conversation_id=conversation_id)
    mine = ConversationMember.objects.filter(conversation_id=access.conversation_id, user_id=user_id)
    if archived:
        mine.filter(archived_at__isnull=True).update(archived_at=timezone.now())
    else:
        mine.update(archived_at=None)
    return archived


@transaction.atomic
def conversation_member_role_set(*, conversation_id: str, actor_id: int, user_id: int, role: str) -> ConversationMember:
    """Change a member's role (owner only; `owner` makes a co-owner). The last owner cannot be
    demoted (`conflict`), themselves included: promote another member first."""
    access = _owner_access(conversation_id, actor_id, "change roles")
    if role not in Role.values:
        raise ServiceError("bad_request", f"role must be one of {', '.join(Role.values)}")
    owners = owners_locked(access.conversation_id)
    member = (
        ConversationMember.objects.select_related("user")
        .filter(conversation_id=access.conversation_id, user_id=user_id)
        .first()
    )
    if member is None:
        raise ServiceError("not_found", "no such member")
    if member.role == role:
        return member
    if owners == [user_id] and role != Role.OWNER:
        raise ServiceError("conflict", "the last owner cannot be demoted; make another member owner first")
    member.role = role
    member.save(update_fields=["role"])
    membership_role_changed(user_id=user_id, conversation_id=access.conversation_id, role=role)
    notify_membership(
        user_id=user_id,
        conversation_id=access.conversation_id,
        title=access.title,
        role=role,
        created=False,
        by_id=actor_id,
    )
    member_event(
        conversation_id=access.conversation_id, type="member_role_changed", user=member.user, by_id=actor_id, role=role
    )
    return member


@transaction.atomic
def conversation_join(*, conversation_id: str, user_id: int) -> Access:
    """Join an open conversation of a workspace the user belongs to: a `member`, or a `viewer` for a
    workspace viewer. Joining one the user is already in changes nothing. Anything else, a private
    conversation included, is not found. Returns the conversation as the user now sees it."""
    joinable = conversation_for_joining(user_id=user_id, conversation_id=conversation_id)
    role = Role.VIEWER if joinable.workspace_role == Role.VIEWER else Role.MEMBER
    # Under the row lock: a delete or a switch to private committed meanwhile is seen here.
    locked = (
        Conversation.objects.select_for_update()
        .filter(id=joinable.conversation_id, deleted_at__isnull=True, visibility=Visibility.OPEN)
        .exists()
    )
    if not locked:
        raise ServiceError("not_found", "conversation not found")
    member, created = ConversationMember.objects.get_or_create(
        conversation_id=joinable.conversation_id, user_id=user_id, defaults={"role": role}
    )
    if created:
        user = User.objects.get(id=user_id)
        member_event(
            conversation_id=joinable.conversation_id, type="member_joined", user=user, by_id=user_id, role=role
        )
    return conversation_for_member(user_id=user_id, conversation_id=joinable.conversation_id)


# --- retention -----------------------------------------------------------------------------------------

# Conversations purged per call: each one deletes its events and messages in cascade, so a call
# stays short however many were deleted; the next call takes the next batch.
PURGE_BATCH = 50
# How often the agent worker's monitoring loop purges (per process): retention is counted in days.
PURGE_EVERY_S = 3600.0
_next_purge_at = 0.0


def conversations_purge_deleted(now: datetime | None = None, *, limit: int = PURGE_BATCH) -> int:
    """Hard-delete (with their members, events, messages, runs…) up to `limit` conversations
    soft-deleted more than CONVERSATION_DELETE_RETENTION_DAYS ago. Returns how many went."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.CONVERSATION_DELETE_RETENTION_DAYS)
    ids = list(
        Conversation.objects.filter(deleted_at__lt=cutoff).order_by("deleted_at").values_list("id", flat=True)[:limit]
    )
    purged = 0
    for conversation_id in ids:  # one transaction each: a big conversation does not hold the others
        with transaction.atomic():
            count, _ = Conversation.objects.filter(id=conversation_id, deleted_at__lt=cutoff).delete()
            purged += 1 if count else 0
    if purged:
        logger.info("purged %d conversation(s) deleted before %s", purged, cutoff.isoformat())
    return purged


def purge_deleted_when_due() -> int:
    """`conversations_purge_deleted` at most once per PURGE_EVERY_S in this process: the periodic
    hook of the agent worker's monitoring loop, so the check costs nothing between two purges."""
    global _next_purge_at
    if time.monotonic() < _next_purge_at:
        return 0
    _next_purge_at = time.monotonic() + PURGE_EVERY_S
    return conversations_purge_deleted()
