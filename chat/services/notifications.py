"""Per-user notifications (docs/protocol.md §9) with their own gap-free seq.

Every notification is routed here, by the rules its user set (chat/services/notification_prefs.py):
a conversation set to `none`, or a kind whose `in_app` is off, creates nothing at all; otherwise it is
stored with the user's next seq, pushed after commit to every socket of the user on every server
process, and marked for Web Push and the email digest when those channels are on for its kind.
Push and email are delivered later, off the request path, by the notifications worker
(chat/services/push.py, chat/services/digest.py), which applies quiet hours, `muted_until` and
collapsing at the moment it delivers. The author of what a notification is about is never notified.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.models import AgentRun
from chat.models import ConversationMember, Notification, RunEndNote, User
from chat.publishing import NotificationCommitted, after_commit
from chat.services import notification_prefs as prefs
from chat.tiers import limits_for
from chat.wire.frames import notification_frame, rfc3339
from monitoring.metrics import metrics

PREVIEW_MAX_CHARS = 200  # docs/protocol.md §9: `preview` ≤ 200 characters


def preview_of(text: str) -> str:
    """One line of at most PREVIEW_MAX_CHARS characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_MAX_CHARS else flat[: PREVIEW_MAX_CHARS - 1] + "…"


def actor_of(user_id: int | None, username: str | None) -> dict[str, Any] | None:
    return {"id": user_id, "username": username} if user_id is not None and username is not None else None


@transaction.atomic
def notify(
    *,
    user_ids: Iterable[int],
    kind: str,
    conversation_id: str | None,
    seq: int | None,
    actor: dict[str, Any] | None,
    preview: str,
    extra: dict[str, Any] | None = None,
) -> list[Notification]:
    """Route one notification of `kind` to each of `user_ids` (the actor excluded) and return the
    ones created. Runs in the caller's transaction: nothing is pushed unless that commits."""
    actor_id = actor["id"] if actor else None
    recipients = sorted({uid for uid in user_ids if uid != actor_id})
    if not recipients:
        return []
    routes = prefs.routes_for(user_ids=recipients, kind=kind, conversation_id=conversation_id)
    created = []
    for user_id in recipients:
        route = routes[user_id]
        if route is None:  # `none` for the conversation, or in_app off for the kind: nothing at all
            continue
        data = {
            "id": str(uuid.uuid4()),
            "kind": kind,
            "priority": prefs.PRIORITIES[kind],
            "conversation": conversation_id,
            "seq": seq,
            "actor": actor,
            "preview": preview_of(preview),
            **(extra or {}),
        }
        created.append(notification_create(user_id=user_id, data=data, push=route.push, email=route.email))
        metrics.inc("notifications_created", kind=kind)
    return created


@transaction.atomic
def notification_create(*, user_id: int, data: dict[str, Any], push: bool = False, email: bool = False) -> Notification:
    """Store a notification (the user row lock orders seqs) and push it once the transaction commits.
    `data` gets its `created_at` here; `push`/`email` mark it for the notifications worker."""
    User.objects.filter(id=user_id).update(notification_seq=F("notification_seq") + 1)
    seq, tier = User.objects.filter(id=user_id).values_list("notification_seq", "tier").get()
    now = timezone.now()
    data = {**data, "created_at": rfc3339(now)}
    notification = Notification.objects.create(
        user_id=user_id,
        seq=seq,
        data=data,
        created_at=now,
        kind=str(data.get("kind", "")),
        priority=str(data.get("priority", "normal")),
        conversation_id=data.get("conversation"),
        push_state=Notification.Delivery.PENDING if push else Notification.Delivery.NONE,
        push_due_at=now if push else None,
        email_state=Notification.Delivery.PENDING if email else Notification.Delivery.NONE,
    )
    limits = limits_for(tier)  # the user's hot buffer of notifications follows their tier
    frame = notification_frame(seq, notification.created_at, data)
    after_commit(NotificationCommitted(user_id, seq, frame, limits.buffer_max_events, limits.buffer_max_age_s))
    return notification


# --- the kinds, one function each (the callers: services of conversations, messages, runs, approvals) -----


def notify_mentions(
    *, conversation_id: str, seq: int, author_id: int, author_username: str, mentioned_ids: Iterable[int], text: str
) -> list[Notification]:
    """`mention`: each member named in a message (resolved to members only by the caller), never
    its author. Call inside the transaction that stored the message event `seq`."""
    return notify(
        user_ids=mentioned_ids,
        kind="mention",
        conversation_id=conversation_id,
        seq=seq,
        actor=actor_of(author_id, author_username),
        preview=text,
    )


def notify_approval_requested(
    *,
    conversation_id: str,
    seq: int,
    run_id: str,
    call_id: str,
    tool: str,
    approver_ids: Iterable[int],
    requested_by_id: int | None,
    requested_by_username: str | None,
    expires_at: datetime | None = None,
) -> list[Notification]:
    """`approval_requested` (urgent: a run waits, and the request expires): each member allowed to
    decide (`approver_ids`, chosen by the caller from `approver_role`), except the member whose
    message started the run. Call inside the transaction that stored the approval_requested event
    `seq`."""
    extra: dict[str, Any] = {"run_id": run_id, "call_id": call_id, "tool": tool}
    if expires_at is not None:
        extra["expires_at"] = rfc3339(expires_at)
    return notify(
        user_ids=approver_ids,
        kind="approval_requested",
        conversation_id=conversation_id,
        seq=seq,
        actor=actor_of(requested_by_id, requested_by_username),
        preview=f"{tool} is waiting for approval",
        extra=extra,
    )


def notify_membership(
    *, user_id: int, conversation_id: str, title: str, role: str, created: bool, by_id: int
) -> list[Notification]:
    """`added_to_conversation` or `role_changed`. `title`, `role` and `by` ride along as they did
    under the old kind names (conversation_added), so a client reading them keeps working."""
    by_username = User.objects.filter(id=by_id).values_list("username", flat=True).first()
    return notify(
        user_ids=[user_id],
        kind="added_to_conversation" if created else "role_changed",
        conversation_id=conversation_id,
        seq=None,
        actor=actor_of(by_id, by_username),
        preview=(f"You were added to {title} as {role}" if created else f"You are now {role} in {title}"),
        extra={"title": title, "role": role, "by": by_id},
    )


def notify_agent_finished(
    *, user_id: int, conversation_id: str, seq: int, run_id: str, status: str, preview: str
) -> list[Notification]:
    """`agent_finished`: a run the user started ended while none of their sockets was subscribed
    to its conversation (the caller checked). No actor: the agent did it."""
    return notify(
        user_ids=[user_id],
        kind="agent_finished",
        conversation_id=conversation_id,
        seq=seq,
        actor=None,
        preview=preview,
        extra={"run_id": run_id, "status": status},
    )


# --- agent_finished: noted when a run ends, decided by the notifications worker ----------------------------

RUN_ENDS = {"agent_completed": "completed", "agent_failed": "failed", "agent_cancelled": "cancelled"}


def run_ended(*, run_id: str, conversation_id: str, seq: int, type: str, data: dict[str, Any]) -> None:
    """Called by append_event for a run's terminal event, in its transaction: note the run for the
    worker, which knows (from Redis) whether its requester had a socket subscribed to the
    conversation. A run its requester cancelled needs no note: they were there."""
    requested_by = AgentRun.objects.filter(id=run_id).values_list("requested_by_id", flat=True).first()
    if requested_by is None or (data.get("by") or {}).get("id") == requested_by:
        return
    text = data.get("text") or (data.get("error") or {}).get("message") or data.get("partial_text") or ""
    # ON CONFLICT DO NOTHING: a second terminal event is a bug the event monitor reports
    # (duplicate_terminal); it must not also abort the transaction that writes it to the log.
    note = RunEndNote(
        run_id=run_id,
        user_id=requested_by,
        conversation_id=conversation_id,
        seq=seq,
        status=RUN_ENDS[type],
        preview=preview_of(text or f"The run {RUN_ENDS[type]}"),
        created_at=timezone.now(),
    )
    RunEndNote.objects.bulk_create([note], ignore_conflicts=True)


def run_end_notes(*, limit: int) -> list[RunEndNote]:
    return list(RunEndNote.objects.order_by("created_at")[:limit])


@transaction.atomic
def run_end_decide(*, run_id: str, away: bool) -> bool:
    """Notify `agent_finished` if the requester was away, and forget the note either way (once: a
    second worker deciding the same note finds it gone). True when a notification was created."""
    note = RunEndNote.objects.select_for_update(skip_locked=True).filter(run_id=run_id).first()
    if note is None:
        return False
    note.delete()
    member = ConversationMember.objects.filter(conversation_id=note.conversation_id, user_id=note.user_id).exists()
    if not away or not member:  # watching; or no longer a member, who must not read its answer here
        return False
    return bool(
        notify_agent_finished(
            user_id=note.user_id,
            conversation_id=str(note.conversation_id),
            seq=note.seq,
            run_id=str(note.run_id),
            status=note.status,
            preview=note.preview,
        )
    )
