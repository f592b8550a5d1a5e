"""What the monitoring app reads: the log's event counts, the runs the sweep judges, and the lists
the admin and the dashboard show. Plain values, no model instances leave a function here."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Exists, Max, OuterRef, Q, Subquery

from agents.models import AgentRun, RunStatus
from chat.models import Event
from monitoring.models import RunEventRecord


def event_counts() -> dict[str, int]:
    """Durable events in the log by type (compacted agent_delta rows no longer count)."""
    return dict(Event.objects.values_list("type").annotate(n=Count("id")).values_list("type", "n"))


def _previous_runs_finished() -> Subquery:
    """When the latest-finishing earlier run of the same conversation finished: a run cannot start
    before that (one run at a time per conversation), so its wait is counted from then."""
    return Subquery(
        AgentRun.objects.filter(
            conversation_id=OuterRef("conversation_id"),
            created_at__lt=OuterRef("created_at"),
            finished_at__isnull=False,
        )
        .order_by()
        .values("conversation_id")
        .annotate(last=Max("finished_at"))
        .values("last")[:1]
    )


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    previous = row.pop("previous_finished")
    row["eligible_at"] = max(row["created_at"], previous) if previous else row["created_at"]
    return row


def run_facts(run_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Per run: created_at, eligible_at (when it could have started), status, tier and username of
    the user who asked. Runs missing from the runs table are absent."""
    rows = (
        AgentRun.objects.filter(id__in=list(run_ids))
        .annotate(previous_finished=_previous_runs_finished())
        .values("id", "created_at", "status", "previous_finished", "requested_by__tier", "requested_by__username")
    )
    return {row["id"]: _facts(_renamed(row)) for row in rows}


def queued_runs_waiting(now: datetime, *, min_wait_s: float, limit: int) -> list[dict[str, Any]]:
    """Queued runs that could have started more than `min_wait_s` ago: created that long ago and
    not behind an earlier run of their conversation that is still going."""
    earlier_unfinished = AgentRun.objects.filter(
        conversation_id=OuterRef("conversation_id"), created_at__lt=OuterRef("created_at"), finished_at__isnull=True
    )
    rows = (
        AgentRun.objects.filter(status=RunStatus.QUEUED, created_at__lt=now - timedelta(seconds=min_wait_s))
        .annotate(previous_finished=_previous_runs_finished(), blocked=Exists(earlier_unfinished))
        .filter(blocked=False)
        .order_by("created_at")
        .values("id", "created_at", "status", "previous_finished", "requested_by__tier", "requested_by__username")[
            :limit
        ]
    )
    return [_facts(_renamed(row)) for row in rows]


def _renamed(values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(values)
    row["tier"] = row.pop("requested_by__tier") or ""
    row["username"] = row.pop("requested_by__username") or ""
    return row


def run_statuses(run_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    return dict(AgentRun.objects.filter(id__in=list(run_ids)).values_list("id", "status"))


def run_events(
    run_ids: Iterable[uuid.UUID],
) -> dict[uuid.UUID, tuple[list[tuple[int, str, str | None]], int | None]]:
    """Per run, its events in the log as (seq, type, call_id) in seq order, agent_delta left out (a
    long answer has thousands), and the seq of its last agent_delta (None: none). Two queries."""
    ids = list(run_ids)
    out: dict[uuid.UUID, tuple[list[tuple[int, str, str | None]], int | None]] = {i: ([], None) for i in ids}
    rows = (
        Event.objects.filter(run_id__in=ids)
        .exclude(type="agent_delta")
        .order_by("run_id", "seq")
        .values_list("run_id", "seq", "type", "data__call_id")
    )
    for run_id, seq, kind, call_id in rows:
        assert run_id is not None  # filtered on run_id
        out[run_id][0].append((seq, kind, call_id if isinstance(call_id, str) else None))
    deltas = (
        Event.objects.filter(run_id__in=ids, type="agent_delta")
        .values("run_id")
        .annotate(last=Max("seq"))
        .values_list("run_id", "last")
    )
    for run_id, last in deltas:
        assert run_id is not None
        out[run_id] = (out[run_id][0], last)
    return out


def runs_with_problems(limit: int = 100) -> list[dict[str, Any]]:
    """Ended runs the audit found owing events or out of order, newest first, with user and tier
    (the dashboard's list; the admin's "problems" filter shows the same runs)."""
    rows = (
        RunEventRecord.objects.filter(audited_events__gt=0)
        .exclude(Q(missing=[]) & Q(problems=[]))
        .order_by("-last_event_at")
        .values(
            "run_id", "conversation_id", "username", "tier", "terminal_event", "missing", "problems", "last_event_at"
        )[: max(1, limit)]
    )
    return [dict(row) for row in rows]


def run_record_counts() -> dict[str, int]:
    """How many runs the monitor knows, by verdict: running, complete, with problems, not audited yet."""
    ended = RunEventRecord.objects.exclude(terminal_event="")
    audited = ended.filter(audited_events__gt=0)
    bad = audited.exclude(Q(missing=[]) & Q(problems=[])).count()
    return {
        "running": RunEventRecord.objects.filter(terminal_event="").count(),
        "complete": audited.count() - bad,
        "problems": bad,
        "unaudited": ended.filter(audited_events=0).count(),
    }
