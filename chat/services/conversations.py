"""Users, workspaces, conversations and their members."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.errors import ServiceError
from chat.models import (
    AgentMode,
    Conversation,
    ConversationMember,
    Role,
    Tier,
    User,
    Visibility,
    Workspace,
    WorkspaceMember,
)
from chat.publishing import UserTold, after_commit
from chat.selectors import conversation_for_member
from chat.services.accounts import membership_revoked, membership_role_changed
from chat.services.events import append_event
from chat.services.notifications import notify_membership
from chat.wire import encode
from chat.wire.frames import rfc3339
from enterprise.audit import audit_record
from enterprise.webhooks import enqueue_member_added


@transaction.atomic
def user_create(
    *,
    username: str,
    password: str,
    tier: str = Tier.FREE,
    email: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """A user and their personal workspace, where their conversations go by default."""
    if tier not in Tier.values:
        raise ServiceError("bad_request", f"unknown tier {tier!r}")
    user = User(username=username, email=email, tier=tier, is_staff=is_staff, is_superuser=is_superuser)
    user.set_password(password)
    user.save()
    personal_workspace_for(user=user)
    return user


def personal_workspace_for(*, user: User) -> Workspace:
    workspace, created = Workspace.objects.get_or_create(
        personal_for=user, defaults={"name": f"{user.username}'s workspace"}
    )
    if created:
        WorkspaceMember.objects.create(workspace=workspace, user=user, role=Role.OWNER)
    return workspace


@transaction.atomic
def workspace_create(*, owner: User, name: str) -> Workspace:
    name = name.strip()
    if not name or len(name) > 200:
        raise ServiceError("bad_request", "name must be 1-200 characters")
    workspace = Workspace.objects.create(name=name)
    WorkspaceMember.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    return workspace


@transaction.atomic
def workspace_member_add(*, workspace: Workspace, actor: User, username: str, role: str) -> WorkspaceMember:
    actor_role = WorkspaceMember.objects.filter(workspace=workspace, user=actor).values_list("role", flat=True).first()
    if actor_role != Role.OWNER:
        raise ServiceError("forbidden", "only a workspace owner may add members")
    if role not in (Role.MEMBER, Role.VIEWER):
        raise ServiceError("bad_request", "role must be 'member' or 'viewer'")
    user = User.objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ServiceError("not_found", "no such user")
    if user.id == actor.id:  # an owner demoting themselves could leave the workspace with no owner
        raise ServiceError("conflict", "an owner cannot change their own role")
    member, _ = WorkspaceMember.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
    audit_record("workspace.member_set", actor, workspace_id=workspace.id, target=user.username, data={"role": role})
    return member


TITLE_MAX_CHARS = 200


def title_checked(title: str) -> str:
    """A conversation title as stored: stripped, 1..TITLE_MAX_CHARS characters."""
    title = title.strip()
    if not title or len(title) > TITLE_MAX_CHARS:
        raise ServiceError("bad_request", f"title must be 1-{TITLE_MAX_CHARS} characters")
    return title


def user_ref(user_id: int) -> dict[str, Any] | None:
    """`{"id","username"}` of a user, as membership events name people (None if they are gone)."""
    username = User.objects.filter(id=user_id).values_list("username", flat=True).first()
    return None if username is None else {"id": user_id, "username": username}


def member_event(*, conversation_id: str, type: str, user: User, by_id: int | None, role: str | None = None) -> None:
    """A durable `member_joined`, `member_role_changed` or `member_left` event (docs/protocol.md §4),
    so every member's list of members follows live. Inside the caller's transaction."""
    data: dict[str, Any] = {"user": {"id": user.id, "username": user.username}}
    if role is not None:
        data["role"] = role
    data["by"] = (
        {"id": user.id, "username": user.username} if by_id == user.id else None if by_id is None else user_ref(by_id)
    )
    append_event(conversation_id=conversation_id, type=type, data=data)
    audit_record(f"conversation.{type}", by_id, conversation_id=conversation_id, target=user.username, data=data)


@dataclass(frozen=True)
class CreatedConversation:
    conversation: Conversation
    role: str


@transaction.atomic
def conversation_create(
    *,
    creator: User,
    title: str,
    workspace_id: uuid.UUID | str | None = None,
    agent: str = "assistant",
    agent_mode: str = AgentMode.AUTO,
    visibility: str = Visibility.PRIVATE,
) -> CreatedConversation:
    """A conversation in a workspace where the creator may write; the creator becomes its owner.
    An `open` one can be found and joined by every member of its workspace (docs/protocol.md §7)."""
    title = title_checked(title)
    if agent_mode not in AgentMode.values:
        raise ServiceError("bad_request", f"agent_mode must be one of {', '.join(AgentMode.values)}")
    if visibility not in Visibility.values:
        raise ServiceError("bad_request", f"visibility must be one of {', '.join(Visibility.values)}")
    if workspace_id is None:
        workspace = personal_workspace_for(user=creator)
    else:
        membership = (
            WorkspaceMember.objects.select_related("workspace").filter(workspace_id=workspace_id, user=creator).first()
        )
        if membership is None:
            raise ServiceError("not_found", "workspace not found")
        if membership.role == Role.VIEWER:
            raise ServiceError("forbidden", "viewers cannot create conversations")
        workspace = membership.workspace
    conversation = Conversation.objects.create(
        workspace=workspace,
        title=title,
        agent=agent,
        agent_mode=agent_mode,
        visibility=visibility,
        created_by=creator,
    )
    ConversationMember.objects.create(conversation=conversation, user=creator, role=Role.OWNER)
    return CreatedConversation(conversation, Role.OWNER)


@transaction.atomic
def conversation_member_add(*, conversation_id: str, actor_id: int, username: str, role: str) -> ConversationMember:
    """Add (or change the role of) a member. Only the conversation's owner may."""
    access = conversation_for_member(user_id=actor_id, conversation_id=conversation_id)
    if not access.is_owner:
        raise ServiceError("forbidden", "only the conversation owner may add members")
    if role not in (Role.MEMBER, Role.VIEWER):
        raise ServiceError("bad_request", "role must be 'member' or 'viewer'")
    user = User.objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ServiceError("not_found", "no such user")
    if user.id == actor_id:  # the owner demoting themselves would leave the conversation with no owner
        raise ServiceError("conflict", "the owner cannot change their own role")
    return _member_set(conversation_id=access.conversation_id, title=access.title, user=user, role=role, by=actor_id)


def _member_set(*, conversation_id: str, title: str, user: User, role: str, by: int) -> ConversationMember:
    # No durable event here: an invitation (by an owner, the agent's invite tool or staff) is told to
    # the invited user as a notification; `member_joined` is for joining an open conversation.
    try:
        member, created = ConversationMember.objects.update_or_create(
            conversation_id=conversation_id, user=user, defaults={"role": role}
        )
    except IntegrityError as exc:  # pragma: no cover - raced with itself
        raise ServiceError("conflict", "membership changed concurrently") from exc
    if not created:
        membership_role_changed(user_id=user.id, conversation_id=conversation_id, role=role)
    else:  # no durable event reports an invitation: the workspace's webhooks hear of it here
        enqueue_member_added(
            conversation_id=str(conversation_id), user_id=user.id, username=user.username, role=role, by_id=by
        )
    audit_record(
        "conversation.member_set", by, conversation_id=conversation_id, target=user.username, data={"role": role}
    )
    notify_membership(
        user_id=user.id, conversation_id=str(conversation_id), title=title, role=role, created=created, by_id=by
    )
    return member


@transaction.atomic
def conversation_member_set_by_staff(
    *, conversation_id: str, user: User, role: str, staff_id: int
) -> ConversationMember:
    """Staff (the admin, which checked their permission) add a member or change a role, owner
    included: the member is told and their sockets hold the new role, as for an owner's change."""
    if role not in Role.values:
        raise ServiceError("bad_request", f"role must be one of {', '.join(Role.values)}")
    title = Conversation.objects.filter(id=conversation_id).values_list("title", flat=True).get()
    return _member_set(conversation_id=str(conversation_id), title=title, user=user, role=role, by=staff_id)


@transaction.atomic
def conversation_member_remove_by_staff(*, conversation_id: str, user_id: int, staff_id: int | None = None) -> None:
    """Staff remove a member: their open sockets stop receiving the conversation once this commits."""
    _member_delete(conversation_id=str(conversation_id), user_id=user_id, by_id=staff_id)


def _member_delete(*, conversation_id: str, user_id: int, by_id: int | None) -> bool:
    """Delete a membership, tell the others (`member_left`) and stop the member's sockets; False
    when there was none."""
    member = ConversationMember.objects.select_related("user").filter(conversation_id=conversation_id, user_id=user_id)
    found = member.first()
    membership_revoked(user_id=user_id, conversation_id=conversation_id)  # told once this commits, in any case
    if found is None:
        return False
    found.delete()
    member_event(conversation_id=conversation_id, type="member_left", user=found.user, by_id=by_id)
    return True


@transaction.atomic
def workspace_member_set_by_staff(*, workspace: Workspace, user: User, role: str) -> WorkspaceMember:
    if role not in Role.values:
        raise ServiceError("bad_request", f"role must be one of {', '.join(Role.values)}")
    member, _ = WorkspaceMember.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
    audit_record("workspace.member_set", None, workspace_id=workspace.id, target=user.username, data={"role": role})
    return member


@transaction.atomic
def workspace_member_remove_by_staff(*, workspace: Workspace, user_id: int) -> None:
    if WorkspaceMember.objects.filter(workspace=workspace, user_id=user_id).delete()[0]:
        audit_record("workspace.member_removed", None, workspace_id=workspace.id, data={"user_id": user_id})


@transaction.atomic
def conversation_member_remove(*, conversation_id: str, actor_id: int, user_id: int) -> None:
    """Remove a member: an owner may remove anyone, any member may leave (remove themself), but the
    last owner can neither leave nor be removed (`conflict`: promote another member first, or delete
    the conversation). Their open sockets stop receiving the conversation once this commits."""
    access = conversation_for_member(user_id=actor_id, conversation_id=conversation_id)
    if actor_id != user_id and not access.is_owner:
        raise ServiceError("forbidden", "only the conversation owner may remove members")
    owners = owners_locked(access.conversation_id)
    if owners == [user_id]:
        raise ServiceError("conflict", "the owner cannot leave their own conversation")
    if not _member_delete(conversation_id=access.conversation_id, user_id=user_id, by_id=actor_id):
        raise ServiceError("not_found", "no such member")


def owners_locked(conversation_id: str) -> list[int]:
    """The owners' user ids, read under the conversation's row lock: two owners demoting or removing
    each other at once are serialized, so the second sees the first's change and the conversation
    always keeps an owner. Inside the caller's transaction."""
    Conversation.objects.select_for_update().filter(id=conversation_id).values_list("id", flat=True).first()
    return list(
        ConversationMember.objects.filter(conversation_id=conversation_id, role=Role.OWNER).values_list(
            "user_id", flat=True
        )
    )


@transaction.atomic
def read_marker_set(*, conversation_id: str, user_id: int, seq: int) -> int:
    """Move the caller's read marker forward (never back, never past the head). Returns it."""
    moved = read_marker_move(conversation_id=conversation_id, user_id=user_id, seq=seq)
    if moved is not None:
        return moved
    return int(
        ConversationMember.objects.filter(conversation_id=conversation_id, user_id=user_id)
        .values_list("last_read_seq", flat=True)
        .get()
    )


def read_marker_move(*, conversation_id: str, user_id: int, seq: int) -> int | None:
    """Move the member's read marker up to `seq`, clamped to the head: the new marker, or None when
    it stayed (a lower or equal seq, or no such member). The update compares the row's own value,
    so two tabs racing can never move it back."""
    head = Conversation.objects.filter(id=conversation_id).values_list("last_seq", flat=True).get()
    target = max(0, min(seq, int(head)))
    moved = ConversationMember.objects.filter(
        conversation_id=conversation_id, user_id=user_id, last_read_seq__lt=target
    ).update(last_read_seq=target)
    return target if moved else None


@transaction.atomic
def draft_save(*, conversation_id: str, user_id: int, text: str, max_chars: int, origin_session: str) -> datetime:
    """Store the member's draft of a conversation ("" clears it) and, once committed, hand it to
    the user's other sockets subscribed to that conversation (not `origin_session`, which wrote it).
    Last write wins: the newest save is what every device shows."""
    if len(text) > max_chars:
        raise ServiceError("too_large", f"a draft must be at most {max_chars} characters")
    now = timezone.now()
    saved = ConversationMember.objects.filter(conversation_id=conversation_id, user_id=user_id).update(
        draft=text, draft_updated_at=now
    )
    if not saved:
        raise ServiceError("not_found", "conversation not found")
    frame = encode(
        {"type": "draft", "conversation": conversation_id, "data": {"text": text, "updated_at": rfc3339(now)}}
    )
    after_commit(
        UserTold(
            user_id,
            {"action": "frame", "conversation": conversation_id, "frame": frame, "exclude_session": origin_session},
        )
    )
    return now


@transaction.atomic
def conversation_agent_mode_set(*, conversation_id: str, actor_id: int, agent_mode: str) -> str:
    """Change when the conversation's agent answers (docs/protocol.md §8). Only the owner may."""
    access = conversation_for_member(user_id=actor_id, conversation_id=conversation_id)
    if not access.is_owner:
        raise ServiceError("forbidden", "only the conversation owner may change when the agent answers")
    if agent_mode not in AgentMode.values:
        raise ServiceError("bad_request", f"agent_mode must be one of {', '.join(AgentMode.values)}")
    Conversation.objects.filter(id=access.conversation_id).update(agent_mode=agent_mode)
    return agent_mode
