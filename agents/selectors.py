"""Reads of runs, always through the caller's conversation membership."""

from __future__ import annotations

from typing import Any

from agents.models import AgentRun, RunStatus
from chat.errors import NotFound
from chat.selectors import Access, conversation_for_member, parse_uuid


def run_for_member(*, user_id: int, run_id: object) -> tuple[AgentRun, Access]:
    """A run the user may see (via its conversation); otherwise NotFound, same as nonexistent."""
    rid = parse_uuid(run_id)
    run = AgentRun.objects.filter(id=rid).only("id", "conversation_id", "status").first()
    if run is None:
        raise NotFound()
    access = conversation_for_member(user_id=user_id, conversation_id=run.conversation_id)
    return run, access


def active_runs(*, conversation_id: str) -> list[dict[str, Any]]:
    """Runs in progress with the answer so far. `seq` is the seq of the last agent_delta already
    included in `text`, so a client appends only deltas with a higher seq (no duplicate chunk)."""
    runs = list(
        AgentRun.objects.filter(conversation_id=conversation_id, status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        .order_by("created_at")
        .values("id", "agent", "status", "partial_text", "partial_seq")
    )
    out = []
    for run in runs:
        out.append(
            {
                "run_id": str(run["id"]),
                "agent": run["agent"],
                "status": run["status"],
                "text": run["partial_text"],
                "seq": run["partial_seq"],
            }
        )
    return out
