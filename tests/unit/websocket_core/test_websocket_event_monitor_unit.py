"""The event monitor: per-run record of the five critical events (one statement per event), the
verdict on a run's events for its shape (`evaluate`), and the per-process counters. The sweep over
real runs is tested in tests/integration/test_monitoring_sweep_integration.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from monitoring.event_monitor import evaluate, record_event
from monitoring.metrics import Metrics
from monitoring.models import RunEventRecord, expected_missing

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record_run(kinds: list[str], run_id: str | None = None) -> RunEventRecord:
    run_id = run_id or str(uuid.uuid4())
    conv = str(uuid.uuid4())
    for i, kind in enumerate(kinds):
        record_event(type=kind, data={"run_id": run_id}, at=T0 + timedelta(seconds=i), conversation_id=conv)
    return RunEventRecord.objects.get(run_id=run_id)


@pytest.mark.django_db
def test_records_first_time_of_each_critical_event_and_counts_terminals() -> None:
    sequence = [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_delta",
        "agent_completed",
    ]
    record = record_run(sequence)
    assert record.complete
    assert record.agent_thinking_at == T0 + timedelta(seconds=1)  # the first one, not the second
    assert record.agent_completed_at == T0 + timedelta(seconds=6)
    assert record.first_event_at == T0
    assert record.last_event_at == T0 + timedelta(seconds=6)
    assert record.terminal_event == "agent_completed"
    assert record.terminal_count == 1
    assert (record.tools_started, record.tools_completed) == (1, 1)
    assert record.event_count == len(sequence)


@pytest.mark.django_db
def test_a_run_that_called_no_tool_is_complete() -> None:
    """The staff page marked every tool-less run as missing tool_executing and tool_completed."""
    record = record_run(["agent_started", "agent_thinking", "agent_delta", "agent_completed"])
    assert record.missing_critical == []
    assert record.complete


@pytest.mark.django_db
def test_a_failed_run_owes_nothing_more_but_a_second_terminal_is_visible() -> None:
    record = record_run(["agent_started", "agent_failed", "agent_cancelled"])
    assert record.missing_critical == []  # failed runs may stop before thinking
    assert record.terminal_event == "agent_failed"  # the first terminal is the one that counted
    assert record.terminal_count == 2
    assert not record.complete


@pytest.mark.django_db
def test_a_completed_run_with_an_unfinished_tool_call_or_no_thinking_is_incomplete() -> None:
    record = record_run(["agent_started", "agent_thinking", "tool_executing", "agent_completed"])
    assert record.missing_critical == ["tool_completed"]
    assert not record.complete
    record = record_run(["agent_started", "agent_delta", "agent_completed"])
    assert record.missing_critical == ["agent_thinking"]


@pytest.mark.django_db
def test_a_running_run_owes_nothing_yet() -> None:
    record = record_run(["agent_started", "tool_executing"])
    assert record.missing_critical == []
    assert not record.complete  # not ended


@pytest.mark.django_db
def test_chat_messages_do_not_create_run_records() -> None:
    record_event(type="message", data={"text": "hi"}, at=datetime.now(UTC), conversation_id=str(uuid.uuid4()))
    assert RunEventRecord.objects.count() == 0


@pytest.mark.django_db
def test_recording_costs_one_statement_per_run_event_and_none_per_message() -> None:
    """record_event runs inside the event log's transaction on every event: one upsert, nothing more."""
    run_id, conv = str(uuid.uuid4()), str(uuid.uuid4())
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        for i, kind in enumerate(["agent_started", "agent_thinking", "agent_delta", "agent_completed"]):
            record_event(type=kind, data={"run_id": run_id}, at=T0 + timedelta(seconds=i), conversation_id=conv)
        record_event(type="message", data={"text": "hi"}, at=T0, conversation_id=conv)
    assert len(queries.captured_queries) == 4
    assert all(q["sql"].lstrip().upper().startswith("INSERT") for q in queries.captured_queries)


def test_expected_missing_depends_on_how_the_run_ended() -> None:
    base = {"started": True, "thought": False, "tools_started": 2, "tools_completed": 1, "require_thinking": True}
    assert expected_missing(terminal="", **base) == []
    assert expected_missing(terminal="agent_completed", **base) == ["agent_thinking", "tool_completed"]
    assert expected_missing(terminal="agent_failed", **base) == []
    assert expected_missing(terminal="agent_cancelled", **{**base, "started": False}) == ["agent_started"]
    assert expected_missing(terminal="agent_completed", **{**base, "require_thinking": False}) == ["tool_completed"]


def events(*items: str | tuple[str, str]) -> list[tuple[int, str, str | None]]:
    """(seq, type, call_id) from "type" or ("type", call_id), numbered from 1."""
    out: list[tuple[int, str, str | None]] = []
    for seq, item in enumerate(items, start=1):
        kind, call = (item, None) if isinstance(item, str) else item
        out.append((seq, kind, call))
    return out


def test_evaluate_a_tool_less_run_is_complete() -> None:
    verdict = evaluate(events("agent_started", "agent_thinking", "agent_completed"))
    assert (verdict.missing, verdict.problems, verdict.extra_terminals) == ([], [], [])


def test_evaluate_matches_tool_calls_by_call_id() -> None:
    run = events(
        "agent_started",
        "agent_thinking",
        ("tool_executing", "c1"),
        ("tool_executing", "c2"),
        ("tool_completed", "c2"),
        ("tool_completed", "c1"),  # completions in another order than the starts are fine
        "agent_completed",
    )
    assert evaluate(run).missing == []
    two_starts_one_end = events(
        "agent_started",
        "agent_thinking",
        ("tool_executing", "c1"),
        ("tool_executing", "c2"),
        ("tool_completed", "c1"),
        "agent_completed",
    )
    assert evaluate(two_starts_one_end).missing == ["tool_completed of call c2"]
    # The same count of pairs, but the completion names a call never started: its start was lost.
    wrong_id = events(
        "agent_started", "agent_thinking", ("tool_executing", "c1"), ("tool_completed", "c9"), "agent_completed"
    )
    assert evaluate(wrong_id).missing == ["tool_completed of call c1", "tool_executing of call c9"]


def test_evaluate_a_run_stopped_mid_tool_owes_nothing() -> None:
    for terminal in ("agent_failed", "agent_cancelled"):
        verdict = evaluate(events("agent_started", "agent_thinking", ("tool_executing", "c1"), terminal))
        assert verdict.missing == []
        assert verdict.problems == []
    assert evaluate(events("agent_started", "agent_cancelled")).missing == []  # cancelled while queued


def test_evaluate_finds_events_out_of_order() -> None:
    early_completion = events(
        "agent_started", "agent_thinking", ("tool_completed", "c1"), ("tool_executing", "c1"), "agent_completed"
    )
    verdict = evaluate(early_completion)
    assert verdict.problems == ["tool_completed (seq 3) of call c1 came before its tool_executing"]
    assert verdict.missing == ["tool_completed of call c1"]
    assert evaluate(events("agent_thinking", "agent_started", "agent_completed")).problems == [
        "agent_thinking (seq 1) came before agent_started"
    ]
    assert evaluate(events("agent_started", "agent_thinking", "agent_completed", "agent_thinking")).problems == [
        "agent_thinking (seq 4) after agent_completed"
    ]


def test_evaluate_finds_a_second_terminal_event() -> None:
    verdict = evaluate(events("agent_started", "agent_thinking", "agent_completed", "agent_failed"))
    assert verdict.extra_terminals == ["agent_failed (seq 4) after agent_completed"]
    assert verdict.missing == []
    assert verdict.problems == []


def test_evaluate_a_run_without_agent_started_misses_it() -> None:
    verdict = evaluate(events("agent_thinking", "agent_completed"))
    assert verdict.missing == ["agent_started"]
    assert verdict.problems == []  # one finding, not also "out of order"
    assert evaluate(events("agent_started", "agent_completed"), require_thinking=False).missing == []


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
