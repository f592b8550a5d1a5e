"""The event monitor: per run, which critical events were emitted, when and in what order, judged
against the run's shape, and alerts when a run breaks it.

Two halves, so the event log's transaction stays tiny:

- `record_event` runs inside `append_event`'s transaction for every event: one upsert statement
  (first time of each critical event, counts, last event time). It judges nothing.
- `sweep(now)` runs periodically (the agent worker every `sweep_interval_s`, or `manage.py
  monitor_runs`): it measures each new run's time to first event against its tier's objective,
  audits every run that ended against the event log itself (`evaluate`: so an event lost after it
  was recorded is still caught), finds runs silent for longer than `stuck_after_s`, feeds the SLO
  buckets, checks SLO burn rates and this process's performance, and delivers the alerts.

What a run owes (`monitoring.models.expected_missing`) depends on how it ended: every run starts with
agent_started and ends with exactly one terminal event; a completed run thought (agent_thinking)
and completed every tool call it started (matched by call_id); a failed or cancelled run may stop
anywhere, a tool call included. Event counts by type are per-process counters (`monitoring.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from monitoring import alerts, slo
from monitoring.config import option
from monitoring.metrics import metrics
from monitoring.metrics.runs import count_incomplete
from monitoring.models import CRITICAL_EVENTS, TERMINAL_EVENTS, RunEventRecord, Severity, expected_missing
from monitoring.performance import monitor as performance_monitor
from monitoring.selectors import queued_runs_waiting, run_events, run_facts, run_statuses

_TABLE = RunEventRecord._meta.db_table
_STAMPS = [f"{name}_at" for name in CRITICAL_EVENTS]
# One statement per event, on PostgreSQL and SQLite alike: insert the run's row or fold the event in.
_UPSERT = f"""
INSERT INTO {_TABLE} (run_id, conversation_id, event_count, first_event_at, last_event_at, {", ".join(_STAMPS)},
    terminal_event, terminal_count, tools_started, tools_completed, audited_events, missing, problems, tier,
    username, slo_counted)
VALUES (%s, %s, 1, %s, %s, {", ".join(["%s"] * len(_STAMPS))}, %s, %s, %s, %s, 0, '[]', '[]', '', '', FALSE)
ON CONFLICT (run_id) DO UPDATE SET
    event_count = {_TABLE}.event_count + 1,
    last_event_at = CASE WHEN EXCLUDED.last_event_at > {_TABLE}.last_event_at
        THEN EXCLUDED.last_event_at ELSE {_TABLE}.last_event_at END,
    {", ".join(f"{c} = COALESCE({_TABLE}.{c}, EXCLUDED.{c})" for c in _STAMPS)},
    terminal_event = CASE WHEN {_TABLE}.terminal_event = '' THEN EXCLUDED.terminal_event
        ELSE {_TABLE}.terminal_event END,
    terminal_count = {_TABLE}.terminal_count + EXCLUDED.terminal_count,
    tools_started = {_TABLE}.tools_started + EXCLUDED.tools_started,
    tools_completed = {_TABLE}.tools_completed + EXCLUDED.tools_completed
"""


def record_event(*, type: str, data: dict[str, Any], at: datetime, conversation_id: str) -> None:
    """Fold one appended event into its run's record (inside the caller's transaction)."""
    metrics.inc("events_appended", type=type)
    run_id = data.get("run_id")
    if not run_id or not type.startswith(("agent_", "tool_")):
        return
    ops = connection.ops
    stamp = ops.adapt_datetimefield_value(at)
    terminal = type in TERMINAL_EVENTS
    params = [
        RunEventRecord._meta.pk.get_db_prep_value(run_id, connection),  # type: ignore[union-attr]
        RunEventRecord._meta.get_field("conversation_id").get_db_prep_value(conversation_id, connection),
        stamp,
        stamp,
        *[stamp if type == name else None for name in CRITICAL_EVENTS],
        type if terminal else "",
        1 if terminal else 0,
        1 if type == "tool_executing" else 0,
        1 if type == "tool_completed" else 0,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT, params)


@dataclass(frozen=True)
class Verdict:
    """What the log says about one ended run."""

    missing: list[str]  # critical events owed and absent
    problems: list[str]  # order problems, one line each
    extra_terminals: list[str]  # terminal events after the first


def evaluate(events: list[tuple[int, str, str | None]], *, require_thinking: bool = True) -> Verdict:
    """Judge a run from its events in the log: (seq, type, call_id) in seq order."""
    missing: list[str] = []
    problems: list[str] = []
    extra: list[str] = []
    types = [t for _, t, _ in events]
    if types and "agent_started" in types and types[0] != "agent_started":
        problems.append(f"{types[0]} (seq {events[0][0]}) came before agent_started")
    executed_ids = {cid for _, t, cid in events if t == "tool_executing"}
    pending: dict[str | None, int] = {}
    terminal = ""
    for seq, kind, call_id in events:
        if terminal:
            if kind in TERMINAL_EVENTS:
                extra.append(f"{kind} (seq {seq}) after {terminal}")
            else:
                problems.append(f"{kind} (seq {seq}) after {terminal}")
            continue
        if kind == "tool_executing":
            if call_id in pending:
                problems.append(f"tool_executing (seq {seq}) repeats call {call_id}")
            pending[call_id] = seq
        elif kind == "tool_completed":
            if call_id in pending:
                del pending[call_id]
            elif call_id in executed_ids:
                problems.append(f"tool_completed (seq {seq}) of call {call_id} came before its tool_executing")
            else:
                missing.append(f"tool_executing of call {call_id}")
        elif kind in TERMINAL_EVENTS:
            terminal = kind
    owed = expected_missing(
        terminal=terminal,
        started="agent_started" in types,
        thought="agent_thinking" in types,
        tools_started=0,
        tools_completed=0,
        require_thinking=require_thinking,
    )
    if terminal == "agent_completed":
        owed += [f"tool_completed of call {cid}" for cid in pending]
    return Verdict(owed + missing, problems, extra)


@dataclass
class SweepReport:
    first_events_checked: int = 0
    audited: int = 0
    stuck: int = 0
    raised: list[str] = field(default_factory=list)  # "kind subject" of every alert raised or repeated
    delivered: int = 0


def sweep(now: datetime | None = None) -> SweepReport:
    """One pass of every periodic check (see the module docstring). Safe to run in several
    processes at once: alerts are deduplicated and each audit writes the same answer."""
    now = now or timezone.now()
    report = SweepReport()
    counts = slo.Counts()
    _check_first_events(now, report, counts)
    _audit_ended_runs(now, report, counts)
    _check_silent_runs(now, report)
    slo.flush(counts)
    for alert in slo.check_burn_alerts(now):
        report.raised.append(f"{alert.kind} {alert.subject}")
    slo.prune(now)
    alerts.check_performance(performance_monitor, now)
    report.delivered = alerts.deliver_pending(now)
    return report


def _raise(report: SweepReport, kind: str, subject: str, message: str, severity: str, now: datetime) -> None:
    alerts.raise_alert(kind=kind, subject=subject, message=message, severity=severity, now=now)
    report.raised.append(f"{kind} {subject}")


def _who(facts: dict[str, Any]) -> str:
    return f"{facts.get('tier') or 'free'} tier, user {facts.get('username') or '?'}"


def _check_first_events(now: datetime, report: SweepReport, counts: slo.Counts) -> None:
    """Time to first event of runs that started since the last sweep, and of queued runs still
    waiting past their tier's objective (they are late already, before their first event)."""
    objectives = option("first_event_s")
    batch = int(option("sweep_batch"))
    records = list(
        RunEventRecord.objects.filter(ttfe_ms__isnull=True, first_event_at__isnull=False).order_by("first_event_at")[
            :batch
        ]
    )
    facts = run_facts([r.run_id for r in records])
    for record in records:
        run = facts.get(record.run_id)
        if run is None:  # events of a run the runs table does not have: nothing to measure against
            RunEventRecord.objects.filter(run_id=record.run_id).update(ttfe_ms=-1)
            continue
        tier = run["tier"] or "free"
        assert record.first_event_at is not None
        ttfe_s = max(0.0, (record.first_event_at - run["eligible_at"]).total_seconds())
        RunEventRecord.objects.filter(run_id=record.run_id).update(
            ttfe_ms=int(ttfe_s * 1000), tier=tier, username=run["username"] or ""
        )
        objective = float(objectives.get(tier, objectives["free"]))
        counts.add("first_event", tier, record.first_event_at, good=ttfe_s <= objective)
        report.first_events_checked += 1
        if ttfe_s > objective:
            message = f"run {record.run_id} ({_who(run)}): first event after {ttfe_s:.1f} s, objective {objective:g} s"
            _raise(report, "slow_first_event", str(record.run_id), message, Severity.WARNING, now)
    waiting = queued_runs_waiting(now, min_wait_s=min(float(v) for v in objectives.values()), limit=batch)
    for run in waiting:
        tier = run["tier"] or "free"
        waited = (now - run["eligible_at"]).total_seconds()
        objective = float(objectives.get(tier, objectives["free"]))
        if waited > objective:
            message = f"run {run['id']} ({_who(run)}): no event yet after {waited:.1f} s, objective {objective:g} s"
            _raise(report, "slow_first_event", str(run["id"]), message, Severity.WARNING, now)


def _audit_ended_runs(now: datetime, report: SweepReport, counts: slo.Counts) -> None:
    """Judge every run that ended (or got events after its audit) from the log itself."""
    require_thinking = bool(option("require_thinking"))
    records = list(
        RunEventRecord.objects.exclude(terminal_event="")
        .filter(audited_events__lt=F("event_count"))
        .order_by("last_event_at")[: int(option("sweep_batch"))]
    )
    if not records:
        return
    logged = run_events([r.run_id for r in records])
    for record in records:
        events, last_delta_seq = logged.get(record.run_id, ([], None))
        verdict = evaluate(events, require_thinking=require_thinking)
        problems = list(verdict.problems)
        terminal_seq = next((seq for seq, kind, _ in events if kind in TERMINAL_EVENTS), None)
        if last_delta_seq is not None and terminal_seq is not None and last_delta_seq > terminal_seq:
            problems.append(f"agent_delta (seq {last_delta_seq}) after the terminal event")
        subject = str(record.run_id)
        who = _who({"tier": record.tier, "username": record.username})
        ended = record.terminal_event
        missing = list(verdict.missing)
        if terminal_seq is None:  # recorded as ended, but the log has no terminal event (any more)
            started = any(kind == "agent_started" for _, kind, _ in events)
            missing = ([] if started else ["agent_started"]) + [ended]
        if missing:
            count_incomplete(missing)
            message = f"run {subject} ({who}) ended {ended} without {', '.join(missing)}"
            _raise(report, "missing_event", subject, message, Severity.WARNING, now)
        if problems:
            message = f"run {subject} ({who}): events out of order: {'; '.join(problems)}"
            _raise(report, "out_of_order", subject, message, Severity.WARNING, now)
        if verdict.extra_terminals:
            message = f"run {subject} ({who}) ended twice: {'; '.join(verdict.extra_terminals)}"
            _raise(report, "duplicate_terminal", subject, message, Severity.CRITICAL, now)
        alerts.resolve(kind="stuck_run", subject=subject, now=now)
        updates: dict[str, Any] = {
            "audited_events": record.event_count,
            "missing": missing,
            "problems": problems + verdict.extra_terminals,
        }
        if not record.slo_counted and record.last_event_at is not None:
            counts.add("run_success", record.tier or "free", record.last_event_at, good=ended != "agent_failed")
            updates["slo_counted"] = True
        RunEventRecord.objects.filter(run_id=record.run_id).update(**updates)
        report.audited += 1


def _check_silent_runs(now: datetime, report: SweepReport) -> None:
    """Started runs with no event for `stuck_after_s`: stuck, or, when the runs table says the run
    ended, a run whose terminal event never reached the log."""
    stuck_after = timedelta(seconds=float(option("stuck_after_s")))
    approval_ttl_s = float(settings.AGENT_APPROVAL_TTL_S)
    records = list(
        RunEventRecord.objects.filter(terminal_event="", last_event_at__lt=now - stuck_after).order_by("last_event_at")[
            : int(option("sweep_batch"))
        ]
    )
    statuses = run_statuses([r.run_id for r in records])
    for record in records:
        assert record.last_event_at is not None
        silent_s = (now - record.last_event_at).total_seconds()
        subject = str(record.run_id)
        who = _who({"tier": record.tier, "username": record.username})
        status = statuses.get(record.run_id)
        if status in ("completed", "failed", "cancelled"):
            message = f"run {subject} ({who}) is {status} but its terminal event is not in the log"
            _raise(report, "missing_event", subject, message, Severity.WARNING, now)
            continue
        if status == "waiting_approval" and silent_s <= stuck_after.total_seconds() + approval_ttl_s:
            continue  # parked on a person: silent by design until its approval expires
        message = f"run {subject} ({who}) has had no event for {silent_s:.0f} s (status {status or 'unknown'})"
        _raise(report, "stuck_run", subject, message, Severity.WARNING, now)
        report.stuck += 1
