"""The event monitor: per-run record of the five critical events, terminal count, and the
per-process counters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from monitoring.event_monitor import record_event
from monitoring.metrics import Metrics
from monitoring.models import RunEventRecord

pytestmark = [pytest.mark.django_db]


def test_records_first_time_of_each_critical_event_and_counts_terminals() -> None:
    run_id, conv = str(uuid.uuid4()), str(uuid.uuid4())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sequence = [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_delta",
        "agent_completed",
    ]
    for i, kind in enumerate(sequence):
        record_event(type=kind, data={"run_id": run_id}, at=t0 + timedelta(seconds=i), conversation_id=conv)
    record = RunEventRecord.objects.get(run_id=run_id)
    assert record.complete
    assert record.agent_thinking_at == t0 + timedelta(seconds=1)  # the first one, not the second
    assert record.agent_completed_at == t0 + timedelta(seconds=6)
    assert record.terminal_event == "agent_completed"
    assert record.terminal_count == 1
    assert record.event_count == len(sequence)


def test_a_run_without_tools_or_with_two_terminals_is_visible() -> None:
    run_id = str(uuid.uuid4())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for kind in ("agent_started", "agent_failed", "agent_cancelled"):
        record_event(type=kind, data={"run_id": run_id}, at=now, conversation_id=str(uuid.uuid4()))
    record = RunEventRecord.objects.get(run_id=run_id)
    assert record.missing_critical == ["agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
    assert record.terminal_count == 2
    assert not record.complete


def test_chat_messages_do_not_create_run_records() -> None:
    record_event(type="message", data={"text": "hi"}, at=datetime.now(UTC), conversation_id=str(uuid.uuid4()))
    assert RunEventRecord.objects.count() == 0


def test_metrics_counters_with_labels_and_snapshot() -> None:
    metrics = Metrics()
    metrics.inc("events_appended", type="message")
    metrics.inc("events_appended", type="message")
    metrics.inc("events_appended", type="agent_delta")
    metrics.inc("gap_fills")
    metrics.gauge_add("sockets", 3)
    metrics.gauge_add("sockets", -1)
    assert metrics.counter("events_appended", type="message") == 2
    snapshot = metrics.snapshot()
    assert snapshot["counters"]["events_appended"] == {"type=message": 2, "type=agent_delta": 1}
    assert snapshot["counters"]["gap_fills"] == 1
    assert snapshot["gauges"] == {"sockets": 2}
