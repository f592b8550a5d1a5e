"""Reads of runs, always through the caller's conversation membership."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from agents.models import AgentRun, Approval, ApprovalStatus, RunStatus, ToolCall, ToolCallStatus
from chat.errors import NotFound
from chat.models import Event
from chat.selectors import Access, conversation_for_member, parse_uuid
from chat.wire.frames import StoredEvent, rfc3339


def run_for_member(*, user_id: int, run_id: object) -> tuple[AgentRun, Access]:
    """A run the user may see (via its conversation); otherwise NotFound, same as nonexistent."""
    rid = parse_uuid(run_id)
    run = AgentRun.objects.filter(id=rid).only("id", "conversation_id", "status").first()
    if run is None:
        raise NotFound()
    access = conversation_for_member(user_id=user_id, conversation_id=run.conversation_id)
    return run, access


@dataclass(frozen=True)
class ApprovalView:
    run_id: str
    call_id: str
    tool: str
    approver_role: str
    status: str

    def allows(self, role: str) -> bool:
        return Approval(approver_role=self.approver_role).allows(role)


def approval_for_member(*, user_id: int, run_id: object, call_id: str) -> tuple[ApprovalView, Access]:
    """A tool call's approval in a conversation the user belongs to; otherwise NotFound (an
    unknown run, a run the user may not see, or a call of it that asked for no approval)."""
    run, access = run_for_member(user_id=user_id, run_id=run_id)
    row = Approval.objects.filter(run_id=run.id, call_id=call_id).values("tool", "approver_role", "status").first()
    if row is None:
        raise NotFound()
    return ApprovalView(str(run.id), call_id, row["tool"], row["approver_role"], row["status"]), access


def active_runs(*, conversation_id: str) -> list[dict[str, Any]]:
    """Runs in progress with the answer so far. `seq` is the seq of the last agent_delta already
    included in `text`, so a client appends only deltas with a higher seq (no duplicate chunk).
    A run waiting for approval carries its open request (`approval`), so a client that joins
    later can show it without paging back to the approval_requested event."""
    runs = list(
        AgentRun.objects.filter(
            conversation_id=conversation_id,
            status__in=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL],
        )
        .order_by("created_at")
        .values("id", "agent", "status", "partial_text", "partial_seq")
    )
    waiting = [run["id"] for run in runs if run["status"] == RunStatus.WAITING_APPROVAL]
    pending = (
        {
            approval.run_id: approval
            for approval in Approval.objects.filter(run_id__in=waiting, status=ApprovalStatus.PENDING)
        }
        if waiting
        else {}
    )
    out = []
    for run in runs:
        item = {
            "run_id": str(run["id"]),
            "agent": run["agent"],
            "status": run["status"],
            "text": run["partial_text"],
            "seq": run["partial_seq"],
        }
        approval = pending.get(run["id"])
        if approval is not None:
            item["approval"] = _requested(approval)
        out.append(item)
    return out


def _requested(approval: Approval) -> dict[str, Any]:
    """An open approval as its approval_requested event's data."""
    return {
        "run_id": str(approval.run_id),
        "call_id": approval.call_id,
        "tool": approval.tool,
        "arguments": approval.arguments,
        "reason": approval.reason,
        "approver_role": approval.approver_role,
        "expires_at": rfc3339(approval.expires_at),
    }


def tool_call_result(
    *, conversation_id: str, run_id: object, call_id: str, retention_days: int | None
) -> dict[str, Any]:
    """A finished tool call of a run of `conversation_id` (resolved through the caller's membership
    check first) with its whole stored result, or NotFound: another conversation's run, an unknown or
    unfinished call and one older than the reader's retention all answer the same."""
    calls = ToolCall.objects.filter(
        run_id=parse_uuid(run_id), run__conversation_id=conversation_id, call_id=call_id, finished_at__isnull=False
    )
    if retention_days is not None:
        calls = calls.filter(started_at__gte=timezone.now() - timedelta(days=retention_days))
    call = calls.values("run_id", "call_id", "tool", "status", "result", "duration_ms").first()
    if call is None:
        raise NotFound()
    return {
        "run_id": str(call["run_id"]),
        "call_id": call["call_id"],
        "tool": call["tool"],
        "ok": call["status"] == ToolCallStatus.OK,
        "result": call["result"],
        "duration_ms": call["duration_ms"],
    }


def run_events(*, conversation_id: str, run_id: str) -> list[StoredEvent]:
    """Every stored event of one run, oldest first (compacted agent_delta rows are absent; the
    terminal event carries the whole text). The caller has checked access (`run_for_member`)."""
    rows = Event.objects.filter(conversation_id=conversation_id, run_id=run_id).order_by("seq")
    return [StoredEvent.from_row(row) for row in rows]
