"""Called by the event-log service inside its transaction: records, per run, when each of the five
critical events was first emitted and how many terminal events it got, so staff can find a run
that missed one. Event counts by type are per-process counters (`monitoring.metrics`) plus the
log itself (`monitoring.selectors.event_counts`): a shared counter row would serialise every
conversation's writes behind one row lock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import F

from monitoring.metrics import metrics
from monitoring.models import CRITICAL_EVENTS, TERMINAL_EVENTS, RunEventRecord


def record_event(*, type: str, data: dict[str, Any], at: datetime, conversation_id: str) -> None:
    metrics.inc("events_appended", type=type)
    run_id = data.get("run_id")
    if not run_id or not type.startswith(("agent_", "tool_")):
        return
    record, _ = RunEventRecord.objects.get_or_create(run_id=run_id, defaults={"conversation_id": conversation_id})
    updates: dict[str, Any] = {"event_count": F("event_count") + 1}
    if type in CRITICAL_EVENTS and getattr(record, f"{type}_at") is None:
        updates[f"{type}_at"] = at
    if type in TERMINAL_EVENTS:
        updates["terminal_event"] = type
        updates["terminal_count"] = F("terminal_count") + 1
    RunEventRecord.objects.filter(run_id=run_id).update(**updates)
