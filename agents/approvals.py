"""A person in the loop (docs/protocol.md §11): every write of an approval's life.

A run that reaches a tool call needing approval is *parked*: the approval row (with what the
backend needs to go on), `approval_requested` and the run's `waiting_approval` status commit
together, and the run's task ends. Nothing waits for the decision: no socket, no task, no worker
slot. The decision (`approval_decide`) or the expiry sweep (`approvals_expire`, run by every
runner) writes `approval_resolved` and rings the runners; one of them resumes the run
(`run_resume_next`) from the database, on any worker, after a restart too. A cancel while it waits
ends it at once (agents/services.py::run_request_cancel).

Locks are taken conversation first, then run, then approval: the order of the claim and of cancel,
so none of them can deadlock with another.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from agents.models import AgentRun, Approval, ApprovalStatus, ApproverRole, RunStatus
from agents.services import ClaimedRun, ResumedCall
from chat.errors import NotFound, ServiceError
from chat.models import Conversation, ConversationMember, User, WorkspaceMember
from chat.publishing import RunnerRung, after_commit
from chat.services.conversations import conversation_member_add
from chat.services.events import append_event
from chat.services.notifications import notify_approval_requested
from chat.wire.frames import StoredEvent, rfc3339
from enterprise.audit import audit_record

logger = logging.getLogger(__name__)

# Expired approvals resolved per sweep; the next sweep (a second later) takes the rest.
EXPIRE_BATCH = 100


def _lock(conversation_id: uuid.UUID | str, run_id: uuid.UUID | str) -> AgentRun:
    Conversation.objects.select_for_update().filter(id=conversation_id).first()
    return AgentRun.objects.select_for_update().get(id=run_id)


@transaction.atomic
def run_park(
    *,
    run_id: str,
    conversation_id: str,
    call_id: str,
    tool: str,
    arguments: dict[str, Any],
    reason: str,
    approver_role: str,
    ttl_s: float,
    backend_state: dict[str, Any],
) -> StoredEvent | None:
    """Park a running run on a tool call that needs approval: approval_requested. None (nothing
    written) when a cancel was asked for meanwhile: the caller ends the run as cancelled."""
    run = _lock(conversation_id, run_id)
    if run.status != RunStatus.RUNNING:
        raise ServiceError("conflict", f"run {run_id} is {run.status}")
    if run.cancel_requested:
        return None
    now = timezone.now()
    approval = Approval.objects.create(
        run=run,
        call_id=call_id,
        tool=tool,
        arguments=arguments,
        reason=reason,
        approver_role=approver_role,
        requested_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        backend_state=backend_state,
    )
    run.status = RunStatus.WAITING_APPROVAL
    run.worker_id = ""
    run.save(update_fields=["status", "worker_id"])
    event = append_event(
        conversation_id=conversation_id,
        type="approval_requested",
        run_id=run_id,
        data={
            "run_id": run_id,
            "call_id": call_id,
            "tool": tool,
            "arguments": arguments,
            "reason": reason,
            "approver_role": approver_role,
            "expires_at": rfc3339(approval.expires_at),
        },
    )
    _notify_approvers(approval, event)
    return event


def _notify_approvers(approval: Approval, event: StoredEvent) -> None:
    """The members who may decide are told (an urgent `approval_requested` notification, routed by
    their preferences): owners, and members too when the tool asks for a member."""
    roles = ["owner"] if approval.approver_role == ApproverRole.OWNER else ["owner", "member"]
    approver_ids = ConversationMember.objects.filter(
        conversation_id=event.conversation_id, role__in=roles, user__is_active=True
    ).values_list("user_id", flat=True)
    run = approval.run
    requester = run.requested_by.username if run.requested_by is not None else None
    notify_approval_requested(
        conversation_id=event.conversation_id,
        seq=event.seq,
        run_id=str(run.id),
        call_id=approval.call_id,
        tool=approval.tool,
        approver_ids=list(approver_ids),
        requested_by_id=run.requested_by_id,
        requested_by_username=requester,
        expires_at=approval.expires_at,
    )


@dataclass(frozen=True)
class Decision:
    run_id: str
    call_id: str
    decision: Literal["approve", "reject"]
    event: StoredEvent


@transaction.atomic
def approval_decide(
    *,
    run_id: str,
    call_id: str,
    user_id: int,
    username: str,
    decision: Literal["approve", "reject"],
    arguments: dict[str, Any] | None = None,
) -> Decision:
    """Record a member's decision and emit approval_resolved; the runners resume the run.

    `arguments` (approve only) replace the asked ones and must already fit the tool's schema.
    The caller's role is read here, under the conversation's lock: below the approver role is
    `forbidden`, a decided, expired or cancelled approval is `conflict`, a non-member NotFound."""
    conversation_id = AgentRun.objects.filter(id=run_id).values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        raise NotFound()
    run = _lock(conversation_id, run_id)
    role = (
        ConversationMember.objects.filter(conversation_id=conversation_id, user_id=user_id, user__is_active=True)
        .values_list("role", flat=True)
        .first()
    )
    approval = Approval.objects.select_for_update().filter(run=run, call_id=call_id).first()
    if role is None or approval is None:
        raise NotFound()
    if not approval.allows(role):
        raise ServiceError("forbidden", f"only a conversation {approval.approver_role} may decide on this call")
    if approval.status != ApprovalStatus.PENDING:
        raise ServiceError("conflict", f"this call was already {approval.status}")
    now = timezone.now()
    if approval.expires_at <= now:  # the sweep resolves it within a second; a late decision is refused
        raise ServiceError("conflict", "this call has expired")
    if run.status != RunStatus.WAITING_APPROVAL:  # not reached while the approval is pending
        raise ServiceError("conflict", f"run {run_id} is {run.status}")
    if arguments is not None and decision != "approve":
        raise ServiceError("bad_request", "arguments go with decision 'approve' only")
    approval.status = ApprovalStatus.APPROVED if decision == "approve" else ApprovalStatus.REJECTED
    approval.decided_at = now
    approval.decided_by_id = user_id
    approval.decided_by_username = username
    if decision == "approve":
        approval.approved_arguments = approval.arguments if arguments is None else arguments
    approval.save(update_fields=["status", "decided_at", "decided_by", "decided_by_username", "approved_arguments"])
    event = _append_resolved(approval, conversation_id, by={"id": user_id, "username": username})
    audit_record(
        f"approval.{approval.status}",
        user_id,
        conversation_id=conversation_id,
        target=approval.tool,
        data={"run_id": run_id, "call_id": call_id},
    )
    return Decision(run_id, call_id, decision, event)


def _append_resolved(approval: Approval, conversation_id: uuid.UUID, *, by: dict[str, Any] | None) -> StoredEvent:
    """approval_resolved, and a ring for the runners: the run goes on."""
    decided = approval.approved_arguments if approval.status == ApprovalStatus.APPROVED else approval.arguments
    event = append_event(
        conversation_id=conversation_id,
        type="approval_resolved",
        run_id=approval.run_id,
        data={
            "run_id": str(approval.run_id),
            "call_id": approval.call_id,
            "decision": str(approval.status),
            "by": by,
            "arguments": decided,
        },
    )
    after_commit(RunnerRung())
    return event


def approvals_expire() -> list[StoredEvent]:
    """Resolve every pending approval past its expiry as `expired` (the runners' sweep)."""
    due = list(
        Approval.objects.filter(status=ApprovalStatus.PENDING, expires_at__lte=timezone.now())
        .order_by("expires_at")
        .values_list("id", "run_id", "run__conversation_id")[:EXPIRE_BATCH]
    )
    events = []
    for approval_id, run_id, conversation_id in due:
        event = _expire_one(approval_id, run_id, conversation_id)
        if event is not None:
            events.append(event)
    return events


@transaction.atomic
def _expire_one(approval_id: int, run_id: uuid.UUID, conversation_id: uuid.UUID) -> StoredEvent | None:
    _lock(conversation_id, run_id)
    approval = Approval.objects.select_for_update().get(id=approval_id)
    if approval.status != ApprovalStatus.PENDING:  # decided or cancelled since the sweep looked
        return None
    approval.status = ApprovalStatus.EXPIRED
    approval.decided_at = timezone.now()
    approval.save(update_fields=["status", "decided_at"])
    return _append_resolved(approval, conversation_id, by=None)


def run_resume_next(*, worker_id: str) -> ClaimedRun | None:
    """Take a parked run whose approval is decided (or expired) and make it running again here."""
    ready = (
        AgentRun.objects.filter(status=RunStatus.WAITING_APPROVAL)
        .exclude(approvals__status=ApprovalStatus.PENDING)
        .order_by("created_at")
        .values_list("id", "conversation_id")[:50]
    )
    for run_id, conversation_id in list(ready):
        claimed = _resume(run_id, conversation_id, worker_id)
        if claimed is not None:
            return claimed
    return None


@transaction.atomic
def _resume(run_id: uuid.UUID, conversation_id: uuid.UUID, worker_id: str) -> ClaimedRun | None:
    run = _lock(conversation_id, run_id)
    if run.status != RunStatus.WAITING_APPROVAL:  # another runner resumed it, or it was cancelled
        return None
    approval = run.approvals.select_related("run__trigger_message").order_by("-requested_at").first()
    if approval is None or approval.status == ApprovalStatus.PENDING:
        return None
    now = timezone.now()
    run.status = RunStatus.RUNNING
    run.heartbeat_at = now
    run.worker_id = worker_id
    run.save(update_fields=["status", "heartbeat_at", "worker_id"])
    trigger = approval.run.trigger_message
    approved = approval.status == ApprovalStatus.APPROVED
    return ClaimedRun(
        run_id=str(run.id),
        conversation_id=str(conversation_id),
        agent=run.agent,
        requested_by_id=run.requested_by_id,
        prompt=trigger.text if trigger else "",
        trigger_seq=(trigger.seq or 0) if trigger else 0,
        resume=ResumedCall(
            call_id=approval.call_id,
            tool=approval.tool,
            decision=str(approval.status),
            arguments=(approval.approved_arguments or {}) if approved else approval.arguments,
            decided_by_id=approval.decided_by_id,
            decided_by_username=approval.decided_by_username,
            backend_state=approval.backend_state,
        ),
        partial_text=run.partial_text,
        traceparent=run.traceparent,
        trace_context=run.trace_context,  # the resumed leg continues the first leg's trace
    )


@transaction.atomic
def member_invite(*, conversation_id: str, approver_id: int, username: str, role: str) -> None:
    """invite_member's change: a member of the conversation's workspace joins the conversation,
    added by the owner who approved (through the membership service, which checks that they own
    it and tells the new member). Anyone else is 'no workspace member named …', whether or not
    such a user exists: the agent's tool must not reveal accounts."""
    workspace_id = Conversation.objects.filter(id=conversation_id).values_list("workspace_id", flat=True).get()
    user = User.objects.filter(
        username=username,
        is_active=True,
        id__in=WorkspaceMember.objects.filter(workspace_id=workspace_id).values("user_id"),
    ).first()
    if user is None:
        raise ServiceError("not_found", f"no member of this workspace is named {username!r}")
    if ConversationMember.objects.filter(conversation_id=conversation_id, user=user).exists():
        raise ServiceError("conflict", f"{username} is already in this conversation")
    conversation_member_add(conversation_id=conversation_id, actor_id=approver_id, username=username, role=role)
