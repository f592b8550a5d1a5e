"""Every write of a run's life: enqueue, claim, emit events, finish, cancel (heartbeats, the reaper and
a stopping worker's hand-off: agents/liveness.py).

Runs are a durable queue in the database. The channel layer only wakes the runner; a runner that
missed the doorbell finds queued runs on its next poll. One run at a time per conversation, checked
under the conversation's row lock, which every run service takes before the run's (`_lock_run`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents import priority
from agents.models import TERMINAL_STATUSES, AgentRun, ApprovalStatus, RunStatus, ToolCall, ToolCallStatus
from agents.tool_results import MAX_STORED_RESULT_CHARS, bound_result, encode_result, result_href
from chat.errors import ServiceError
from chat.models import AuthorKind, Conversation, Message, Role
from chat.publishing import RunnerRung, after_commit
from chat.services.events import append_event
from chat.wire.frames import StoredEvent


def run_enqueue(
    *, conversation_id: str, trigger_message_id: uuid.UUID, requested_by_id: int, agent: str, traceparent: str = ""
) -> uuid.UUID:
    """Queue a run (inside the caller's transaction, next to the triggering message). `traceparent`:
    the caller's W3C trace context from `send`, which the run's trace continues."""
    run = AgentRun.objects.create(
        conversation_id=conversation_id,
        trigger_message_id=trigger_message_id,
        requested_by_id=requested_by_id,
        agent=agent,
        traceparent=traceparent,
    )
    after_commit(RunnerRung())
    return run.id


@dataclass(frozen=True)
class ResumedCall:
    """The tool call a parked run waited on, as decided: the run goes on from here."""

    call_id: str
    tool: str
    decision: str  # approved, rejected or expired
    arguments: dict[str, Any]  # what runs (approved), or what was asked (otherwise)
    decided_by_id: int | None
    decided_by_username: str
    backend_state: dict[str, Any]


@dataclass(frozen=True)
class ClaimedRun:
    run_id: str
    conversation_id: str
    agent: str
    requested_by_id: int | None
    prompt: str
    events: list[StoredEvent] = field(default_factory=list)
    trigger_seq: int = 0
    # A run resumed after an approval: the decided call, and the answer streamed before the pause.
    resume: ResumedCall | None = None
    partial_text: str = ""
    # Tracing: the caller's traceparent, and the first traced leg's root span (a resumed leg continues it).
    traceparent: str = ""
    trace_context: str = ""


# A conversation with one of these runs has its run in progress: its next queued run waits.
ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)


def run_claim_next(*, worker_id: str, tiers: frozenset[str] | None = None) -> ClaimedRun | None:
    """Start the first queued run in the priority lane's order (agents/priority.py: by tier, with a
    bounded wait) whose conversation has no running run; emit agent_started. `tiers`: only runs of
    these tiers (the runner's last slots are reserved for the tiers above), None: any."""
    # Conversations (not runs): one busy conversation's queue must not hide every other conversation's.
    busy = AgentRun.objects.filter(status__in=ACTIVE_STATUSES).values("conversation_id")
    for conversation_id in priority.claim_order(busy=busy, tiers=tiers):
        claimed = _claim_in_conversation(conversation_id, worker_id, tiers)
        if claimed is not None:
            return claimed
    return None


@transaction.atomic
def _claim_in_conversation(
    conversation_id: uuid.UUID, worker_id: str, tiers: frozenset[str] | None
) -> ClaimedRun | None:
    # The conversation row lock serialises claimers of one conversation across workers.
    Conversation.objects.select_for_update().filter(id=conversation_id).first()
    if AgentRun.objects.filter(conversation_id=conversation_id, status__in=ACTIVE_STATUSES).exists():
        return None
    run = (
        AgentRun.objects.select_related("trigger_message")
        .filter(conversation_id=conversation_id, status=RunStatus.QUEUED)
        .order_by("created_at")
        .first()
    )
    if run is None or not priority.may_take(run.requested_by_id, tiers):  # the head, re-read under the lock
        return None
    now = timezone.now()
    run.status = RunStatus.RUNNING
    events = _show_started(run, now)
    run.heartbeat_at = now
    run.worker_id = worker_id
    run.save(update_fields=["status", "started_at", "heartbeat_at", "worker_id"])
    return ClaimedRun(
        run_id=str(run.id),
        conversation_id=str(conversation_id),
        agent=run.agent,
        requested_by_id=run.requested_by_id,
        prompt=run.trigger_message.text if run.trigger_message else "",
        events=events,
        trigger_seq=(run.trigger_message.seq or 0) if run.trigger_message else 0,
        traceparent=run.traceparent,
    )


def run_trace_note(*, run_id: str, trace_id: str, trace_context: str) -> None:
    """Keep the run's trace (its first traced leg's): later legs continue it, the admin shows it."""
    AgentRun.objects.filter(id=run_id, trace_id="").update(trace_id=trace_id, trace_context=trace_context)


def _lock_run(run_id: str | uuid.UUID, conversation_id: str) -> AgentRun:
    """Lock a run to write its events: conversation first, then run, the order of every run service
    (claim, cancel and approvals need the conversation first); run-then-conversation deadlocked."""
    Conversation.objects.select_for_update().filter(id=conversation_id).values_list("id", flat=True).first()
    return AgentRun.objects.select_for_update().get(id=run_id)


def _require_running(run_id: str | uuid.UUID, conversation_id: str) -> AgentRun:
    if (run := _lock_run(run_id, conversation_id)).status != RunStatus.RUNNING:
        raise ServiceError("conflict", f"run {run_id} is {run.status}")
    return run


@transaction.atomic
def run_emit(*, run_id: str, conversation_id: str, type: str, data: dict[str, Any]) -> StoredEvent:
    """Append a non-terminal agent event (agent_thinking, agent_delta) to a running run."""
    run = _require_running(run_id, conversation_id)
    event = append_event(conversation_id=conversation_id, type=type, run_id=run_id, data={"run_id": run_id, **data})
    if type == "agent_delta":
        run.partial_text += data["text"]
        fields: dict[str, Any] = {"partial_text": run.partial_text, "partial_seq": event.seq}
        if run.first_token_ms is None and run.started_at is not None:  # the first answer text: analytics' TTFT
            fields["first_token_ms"] = max(0, int((timezone.now() - run.started_at).total_seconds() * 1000))
        AgentRun.objects.filter(id=run.id).update(**fields)
    return event


@transaction.atomic
def tool_call_start(
    *, run_id: str, conversation_id: str, call_id: str, tool: str, arguments: dict[str, Any]
) -> StoredEvent:
    _require_running(run_id, conversation_id)
    ToolCall.objects.create(run_id=run_id, call_id=call_id, tool=tool, arguments=arguments, started_at=timezone.now())
    return append_event(
        conversation_id=conversation_id,
        type="tool_executing",
        run_id=run_id,
        data={"run_id": run_id, "call_id": call_id, "tool": tool, "arguments": arguments},
    )


@transaction.atomic
def tool_call_finish(*, run_id: str, conversation_id: str, call_id: str, ok: bool, result: Any) -> StoredEvent:
    _require_running(run_id, conversation_id)
    call = ToolCall.objects.select_for_update().get(run_id=uuid.UUID(run_id), call_id=call_id)
    now = timezone.now()
    call.finished_at = now
    call.duration_ms = int((now - call.started_at).total_seconds() * 1000)
    call.status = ToolCallStatus.OK if ok else ToolCallStatus.ERROR
    encoded = encode_result(result)
    call.result = bound_result(result, limit=MAX_STORED_RESULT_CHARS, encoded=encoded)
    call.save(update_fields=["finished_at", "duration_ms", "status", "result"])
    href = result_href(conversation_id=conversation_id, run_id=run_id, call_id=call_id)
    return append_event(
        conversation_id=conversation_id,
        type="tool_completed",
        run_id=run_id,
        data={
            "run_id": run_id,
            "call_id": call_id,
            "tool": call.tool,
            "ok": ok,
            "result": bound_result(result, href=href, encoded=encoded),
            "duration_ms": call.duration_ms,
        },
    )


@transaction.atomic
def run_complete(
    *, run_id: str, conversation_id: str, text: str, usage: dict[str, Any], model: str = ""
) -> StoredEvent:
    """End a run with its answer: the agent message and agent_completed, in one transaction. `model`: the
    backend's model that answered, kept with the run's usage (analytics price it)."""
    run = _require_running(run_id, conversation_id)
    now = timezone.now()
    message = Message.objects.create(
        conversation_id=conversation_id, author_kind=AuthorKind.AGENT, text=text or "(no answer)", run_id=run.id
    )
    run.status = RunStatus.COMPLETED
    run.finished_at = now
    run.partial_text = text
    run.usage = usage
    run.model = model[:100]
    run.save(update_fields=["status", "finished_at", "partial_text", "usage", "model"])
    event = append_event(
        conversation_id=conversation_id,
        type="agent_completed",
        run_id=run_id,
        data={
            "run_id": run_id,
            "message_id": str(message.id),
            "text": message.text,
            "duration_ms": run.duration_ms,
            "usage": usage,
        },
    )
    Message.objects.filter(id=message.id).update(seq=event.seq)
    return event


@transaction.atomic
def run_fail(
    *,
    run_id: str,
    conversation_id: str,
    code: str,
    message: str,
    only_if_stale_before: datetime | None = None,
    retry_after_ms: int | None = None,
) -> StoredEvent | None:
    """End a run with agent_failed. Returns None if it had already ended (exactly one terminal),
    or, for the reaper, if its heartbeat came back since the reaper looked (checked under lock).
    `retry_after_ms` (a dependency is down) tells clients when asking again may work."""
    run = _lock_run(run_id, conversation_id)
    if run.status in TERMINAL_STATUSES:
        return None
    if only_if_stale_before is not None and (run.heartbeat_at is None or run.heartbeat_at >= only_if_stale_before):
        return None
    now = timezone.now()
    if run.status == RunStatus.QUEUED:
        _show_started(run, now)
    run.status = RunStatus.FAILED
    run.finished_at = now
    run.error_code = code
    run.error_message = message[:2000]
    run.save(update_fields=["status", "finished_at", "error_code", "error_message", "started_at"])
    error: dict[str, Any] = {"code": code, "message": message[:2000]}
    if retry_after_ms is not None:
        error["retry_after_ms"] = retry_after_ms
    return append_event(
        conversation_id=conversation_id,
        type="agent_failed",
        run_id=run_id,
        data={"run_id": run_id, "error": error},
    )


def _show_started(run: AgentRun, now: datetime) -> list[StoredEvent]:
    """The run's agent_started, once: a run a stopping worker handed back to the queue (agents/liveness.py)
    showed it already and keeps its `started_at`. Sets `started_at`; the caller saves the run."""
    if run.started_at is not None:
        return []
    run.started_at = now
    return [_append_started(run, now)]


def _append_started(run: AgentRun, now: Any) -> StoredEvent:
    data: dict[str, Any] = {
        "run_id": str(run.id),
        "agent": run.agent,
        "trigger_message_id": str(run.trigger_message_id) if run.trigger_message_id else None,
        "queued_ms": int((now - run.created_at).total_seconds() * 1000),
    }
    if run.trigger_message_id:  # a second run on one question is a regenerate: it names the newest earlier one
        earlier = AgentRun.objects.filter(trigger_message_id=run.trigger_message_id, created_at__lt=run.created_at)
        if (regenerates := earlier.order_by("-created_at").values_list("id", flat=True).first()) is not None:
            data["regenerates"] = str(regenerates)
    return append_event(conversation_id=run.conversation_id, type="agent_started", run_id=run.id, data=data)


@dataclass(frozen=True)
class CancelResult:
    run_id: str
    status: str
    events: list[StoredEvent]
    conversation_id: str


@transaction.atomic
def run_request_cancel(*, run_id: str, by_user_id: int, by_username: str, role: str | None = None) -> CancelResult:
    """Cancel a run. A queued run ends at once (agent_started + agent_cancelled, so every run keeps
    docs/protocol.md §4's shape), and so does one parked for an approval (agent_cancelled; nobody
    holds it); a running one is flagged and its runner stops it promptly.
    A member (`role` from `run_for_member`) may stop a run they started, an owner any: others are
    `forbidden`. No role: staff (the admin's action), who may stop any run."""
    conversation_id, requested_by_id = (
        AgentRun.objects.filter(id=run_id).values_list("conversation_id", "requested_by_id").get()
    )
    if role is not None and role != Role.OWNER and requested_by_id != by_user_id:
        raise ServiceError("forbidden", "only who started this run or a conversation owner may stop it")
    # A running run is only flagged, by one UPDATE of its row: Stop never waits for the conversation
    # its answer is streaming into.
    if AgentRun.objects.filter(id=run_id, status=RunStatus.RUNNING).update(
        cancel_requested=True, cancelled_by_id=by_user_id
    ):
        after_commit(RunnerRung(str(run_id)))  # whichever runner holds it stops it now
        return CancelResult(str(run_id), "cancelling", [], str(conversation_id))
    run = _lock_run(run_id, str(conversation_id))
    if run.status in TERMINAL_STATUSES:
        raise ServiceError("conflict", f"run already {run.status}")
    if run.status == RunStatus.QUEUED:
        now = timezone.now()
        started = _show_started(run, now)
        run.status = RunStatus.CANCELLED
        run.finished_at = now
        run.cancelled_by_id = by_user_id
        run.cancel_requested = True
        run.save(update_fields=["status", "started_at", "finished_at", "cancelled_by", "cancel_requested"])
        cancelled = append_event(
            conversation_id=run.conversation_id,
            type="agent_cancelled",
            run_id=run.id,
            data={"run_id": str(run.id), "by": {"id": by_user_id, "username": by_username}, "partial_text": ""},
        )
        after_commit(RunnerRung())  # the conversation's next queued run may start now
        return CancelResult(str(run.id), RunStatus.CANCELLED, [*started, cancelled], str(run.conversation_id))
    if run.status == RunStatus.WAITING_APPROVAL:
        # No runner holds a parked run: it ends here, and its open approval with it.
        run.cancel_requested = True
        run.cancelled_by_id = by_user_id
        run.save(update_fields=["cancel_requested", "cancelled_by"])
        run.approvals.filter(status=ApprovalStatus.PENDING).update(
            status=ApprovalStatus.CANCELLED, decided_at=timezone.now()
        )
        cancelled = _append_cancelled(run, {"id": by_user_id, "username": by_username})
        after_commit(RunnerRung())
        return CancelResult(str(run.id), RunStatus.CANCELLED, [cancelled], str(run.conversation_id))
    run.cancel_requested = True
    run.cancelled_by_id = by_user_id
    run.save(update_fields=["cancel_requested", "cancelled_by"])
    after_commit(RunnerRung(str(run.id)))  # whichever runner holds it stops it now
    return CancelResult(str(run.id), "cancelling", [], str(run.conversation_id))


@transaction.atomic
def run_finish_cancelled(*, run_id: str, conversation_id: str) -> StoredEvent | None:
    """The runner stopped a running run on request: agent_cancelled with the answer so far."""
    run = _lock_run(run_id, conversation_id)
    if run.status in TERMINAL_STATUSES:
        return None
    by = {"id": run.cancelled_by_id, "username": run.cancelled_by.username if run.cancelled_by else None}
    return _append_cancelled(run, by)


def _append_cancelled(run: AgentRun, by: dict[str, Any]) -> StoredEvent:
    """End a started run as cancelled: its status, and agent_cancelled with the answer so far."""
    run.status = RunStatus.CANCELLED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at"])
    return append_event(
        conversation_id=run.conversation_id,
        type="agent_cancelled",
        run_id=run.id,
        data={"run_id": str(run.id), "by": by, "partial_text": run.partial_text},
    )
